package k8s

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// spawnThread starts every child from one OS thread that never exits.
// Pdeathsig fires when the forking *thread* dies, not the process, and the Go
// runtime destroys threads whose goroutine exits while locked (netns.Do does
// that when it cannot return to its namespace); a child forked from such a
// thread would be killed at a random moment.
var (
	spawnOnce sync.Once
	spawnCh   = make(chan spawnReq)
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startPinned(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as we do
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// process is one child (etcd, kube-apiserver, …) with its output in a log
// file in the state dir.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // valid after done is closed
}

// ProcessInfo describes a running child, for measurements.
type ProcessInfo struct {
	Name string
	PID  int
	// RSS is the resident set size in bytes, 0 if the process is gone.
	RSS int64
	// Exited is set once the process has ended unexpectedly.
	Exited bool
	// Log is the file holding the process's stdout and stderr.
	Log string
}

func startProcess(st *stateDir, name, bin string, args ...string) (*process, error) {
	return startProcessEnv(st, name, nil, bin, args...)
}

// startProcessEnv is startProcess with env added to our environment (later
// entries win, so PATH can be replaced).
func startProcessEnv(st *stateDir, name string, env []string, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(st.dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = st.dir
	// SIGKILL on our death: a crashed test must not leave an apiserver
	// holding ports; Setpgid keeps a terminal's ^C from reaching the
	// children before we stop them in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := startPinned(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := st.record(p); err != nil {
		p.stop(0)
		return nil, err
	}
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, and SIGKILL after grace, then waits for the exit.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	sig := syscall.SIGTERM
	if grace <= 0 {
		sig = syscall.SIGKILL
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *process) info() ProcessInfo {
	pi := ProcessInfo{Name: p.name, PID: p.cmd.Process.Pid, Log: p.logPath}
	if pi.Exited = p.exited(); !pi.Exited {
		pi.RSS = rss(pi.PID)
	}
	return pi
}

// failure describes an unexpected exit with the end of the log.
func (p *process) failure() error {
	log, _ := os.ReadFile(p.logPath)
	return fmt.Errorf("%s exited: %v; last log lines:\n%s", p.name, p.err, lastLines(string(log), 15))
}

func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// startTime is field 22 of /proc/PID/stat: together with the PID it
// identifies a process even after the PID is recycled.
func startTime(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may contain spaces; fields are counted
	// after its closing parenthesis.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b)[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[19], nil
}

// stateDir is a control plane's working directory. Its "pids" file lists
// every child started, so that the next Start can kill a crashed run's
// leftovers (Pdeathsig covers most crashes, not a SIGKILLed parent whose
// children were reparented before the signal was armed, nor `go test` timing
// out a child test binary that is itself killed with SIGQUIT).
type stateDir struct {
	dir string
	mu  sync.Mutex
}

const pidsFile = "pids"

func (s *stateDir) record(p *process) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := startTime(p.cmd.Process.Pid)
	if err != nil {
		return fmt.Errorf("record %s: %w", p.name, err)
	}
	f, err := os.OpenFile(filepath.Join(s.dir, pidsFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("record %s: %w", p.name, err)
	}
	_, err = fmt.Fprintf(f, "%d %s %s\n", p.cmd.Process.Pid, st, p.name)
	return errors.Join(err, f.Close())
}

// killLeftovers kills the processes listed in dir's pids file that still
// run (same PID and start time) and reports what it killed.
func killLeftovers(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leftover pids: %w", err)
	}
	var killed []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		if st, err := startTime(pid); err != nil || st != f[1] {
			continue // gone, or the PID now belongs to someone else
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			killed = append(killed, fmt.Sprintf("%s(%d)", f[2], pid))
			// Wait for the exit so ports and netns references are free.
			for i := 0; i < 100; i++ {
				if st, err := startTime(pid); err != nil || st != f[1] || zombie(pid) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return killed, nil
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}
