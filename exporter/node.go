package exporter

import (
	"github.com/lbpath/lbpath/agent/conntrack"
	"github.com/lbpath/lbpath/agent/path"
)

// nodeStatsFunc reads the node's conntrack table (conntrack.Listener.Table).
type nodeStatsFunc = func() (conntrack.TableStats, error)

// SetNodeStats gives the exporter the reader of the node's conntrack table
// for the lbpath.node.conntrack.* metrics. It is separate from New because
// the agent opens its conntrack listener after the exporter; until it is
// called those metrics are not reported.
func (e *Exporter) SetNodeStats(read func() (conntrack.TableStats, error)) {
	e.nodeStats.Store(&read)
}

// nodeConnsFunc reads the node's own connections by class.
type nodeConnsFunc = func() []path.ClassCount

// SetNodeConnections gives the exporter the reader of the agent's counts of
// the node's own connections by class, for lbpath.agent.node_connections.
// Until it is called that metric is not reported.
func (e *Exporter) SetNodeConnections(read func() []path.ClassCount) {
	e.nodeConns.Store(&read)
}
