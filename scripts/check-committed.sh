#!/usr/bin/env bash
# Fails when a tracked file is a build output: an executable or object file
# (ELF, PE, Mach-O, ar archive), a Go test binary, or anything under .bin/.
# The exceptions are the bpf2go outputs (agent/bpf/*_bpfel.o, the testbed's
# socket-LB translator and TC NodePort load balancer), committed by rule and
# checked against their sources by check-generated.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# magic prints the first 8 bytes of a file as hex.
magic() { od -An -tx1 -N8 -- "$1" | tr -d ' \n'; }

bad=()
while IFS= read -r -d '' f; do
  case "$f" in
    agent/bpf/*_bpfel.o | testbed/socketlb/*_bpfel.o | testbed/tcnodeport/*_bpfel.o) continue ;;
    .bin/* | *.test | *.exe) bad+=("$f (build output by name)"); continue ;;
  esac
  [ -f "$f" ] || continue
  m=$(magic "$f")
  case "$m" in
    7f454c46*) bad+=("$f (ELF)") ;;
    4d5a*) bad+=("$f (PE executable)") ;;
    feedface* | feedfacf* | cefaedfe* | cffaedfe* | cafebabe*) bad+=("$f (Mach-O)") ;;
    213c617263683e0a) bad+=("$f (ar archive, e.g. a .a library)") ;;
  esac
done < <(git ls-files -z)

if [ ${#bad[@]} -gt 0 ]; then
  echo "committed build outputs (remove with git rm --cached, keep them ignored by .gitignore):" >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "no build outputs committed"
