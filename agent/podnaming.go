package agent

import (
	"log/slog"

	"github.com/lbpath/lbpath/agent/capture"
	"github.com/lbpath/lbpath/agent/path"
	"github.com/lbpath/lbpath/agent/podns"
	"github.com/lbpath/lbpath/exporter"
)

// openPodns starts the namespace → pod resolver, or degrades: without the
// host's /proc (no hostPID) or NS_GET_ID (Linux < 6.18) pods are named by
// IP only, logged once here and reported as
// lbpath.agent.pod_netns.available 0.
func openPodns(cfg Config, log *slog.Logger) *podns.Resolver {
	if cfg.NoPodNetns {
		return podns.Disabled()
	}
	r, err := podns.New(podns.Config{Proc: cfg.ProcRoot, NodeNetns: cfg.Netns}, log)
	if err != nil {
		log.Warn("server pods are named by IP only: their network namespaces cannot be read; during rollouts a reused pod IP can be misattributed", "err", err)
		return podns.Disabled()
	}
	return r
}

// socket feeds one capture event to the join, and first asks for its
// namespace when a server socket opens or closes: the pod is surely alive
// then, and the answer is ready when the connection is named a second
// later. Want is a map read for a namespace already known.
func (a *Agent) socket(e *capture.Event) {
	if a.podns != nil && e.Side == capture.SideServer && (e.Type == capture.EventOpen || e.Type == capture.EventClose) {
		a.podns.Want(e.NetnsCookie)
	}
	if e.Type == capture.EventConnect && e.UDP {
		// A connected UDP socket's translation: its flows are the UDP
		// table's.
		if a.udp.table != nil {
			a.udp.table.Connect(e)
		}
		return
	}
	a.table.Socket(e)
}

// PodNaming reports how server pods were named, for the self-metrics.
func (a *Agent) PodNaming() exporter.PodNaming {
	by, dis := a.naming.Snapshot()
	return exporter.PodNaming{BySource: by, Disagree: dis,
		Available: a.podns != nil && !a.podns.Stats.Unavailable.Load()}
}

// Podns exposes the namespace resolver (nil without Kube).
func (a *Agent) Podns() *podns.Resolver { return a.podns }

// NamingCounts exposes how server pods were named (tests).
func (a *Agent) NamingCounts() ([]path.NamingCount, uint64) { return a.naming.Snapshot() }
