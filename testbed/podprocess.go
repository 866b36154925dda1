package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// podProcess is a real program serving in a pod (PodSpec.Command): started
// in the pod's network namespace with nsenter, in its own process group so
// that stop reaches its children (nginx's workers) too.
type podProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  *capped
	err  error // Wait's result, set before done closes
}

// capped keeps the first 64 KiB a process writes, for error messages.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := 64<<10 - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.buf.String())
}

// startPodProcess runs argv in pod's namespace and returns once something
// listens on the pod's port there (the readiness a kubelet's TCP probe
// would check), or fails with the program's output.
func startPodProcess(ctx context.Context, pod *Pod, argv []string) (*podProcess, error) {
	if _, err := exec.LookPath(argv[0]); err != nil {
		return nil, fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	out := &capped{}
	cmd := exec.Command("nsenter", append([]string{"--net=" + pod.Netns, "--"}, argv...)...)
	cmd.Stdout, cmd.Stderr = out, out
	// No Pdeathsig: it follows the OS thread that forked, and Go threads
	// that entered a namespace (netns.Do) may exit at any time.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pod %s: start %s: %w", pod.Name, argv[0], err)
	}
	pp := &podProcess{cmd: cmd, done: make(chan struct{}), out: out}
	go func() {
		pp.err = cmd.Wait()
		close(pp.done)
	}()
	if err := pp.waitListening(ctx, pod); err != nil {
		return nil, errors.Join(err, pp.stop())
	}
	return pp, nil
}

func (pp *podProcess) waitListening(ctx context.Context, pod *Pod) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		// ss reads the namespace's socket table: no connection is
		// made, so the agents under test see nothing of this probe.
		got, err := exec.CommandContext(ctx, "nsenter", "--net="+pod.Netns, "--",
			"ss", "-Hltn", "sport = :"+strconv.Itoa(int(pod.Port))).Output()
		if err == nil && len(bytes.TrimSpace(got)) > 0 {
			return nil
		}
		select {
		case <-pp.done:
			return fmt.Errorf("pod %s: %s exited before listening on :%d: %v: %s", pod.Name, pp.cmd.Args[3], pod.Port, pp.err, pp.out)
		case <-ctx.Done():
			return fmt.Errorf("pod %s: %s not listening on :%d: %w: %s", pod.Name, pp.cmd.Args[3], pod.Port, ctx.Err(), pp.out)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after 3 s.
func (pp *podProcess) stop() error {
	pgid := pp.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-pp.done:
	case <-time.After(3 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-pp.done
	}
	// Workers left behind by a killed master are in the group too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return nil
}
