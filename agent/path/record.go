package path

import (
	"github.com/lbpath/lbpath/agent/flow"
	"github.com/lbpath/lbpath/agent/kube"
)

// Record is the JSON form of a Path: the Connection's fields plus the names
// (all documented in docs/TELEMETRY.md).
type Record struct {
	flow.Connection
	Service    string `json:"service,omitempty"` // namespace/name
	Entry      string `json:"entry,omitempty"`
	EntryNode  string `json:"entry_node,omitempty"`
	Pod        string `json:"pod,omitempty"` // namespace/name
	PodNode    string `json:"pod_node,omitempty"`
	PodZone    string `json:"pod_zone,omitempty"`
	Deployment string `json:"deployment,omitempty"`
	ReplicaSet string `json:"replicaset,omitempty"`
	ClientKind string `json:"client_kind,omitempty"`
	ClientName string `json:"client_name,omitempty"` // pod namespace/name or node name
	ClientLost bool   `json:"client_lost,omitempty"`
	// ClientNodeAddr says how the client address is known to be
	// ClientName's node (kube.NodeAddrSource: internal_ip, flannel_tunnel,
	// calico_tunnel, cilium_host, podcidr_gateway, …); client_kind node only.
	ClientNodeAddr string      `json:"client_node_address_source,omitempty"`
	CrossNode      bool        `json:"cross_node,omitempty"`
	NotReady       bool        `json:"endpoint_not_ready,omitempty"`
	Terminating    bool        `json:"endpoint_terminating,omitempty"`
	Diagnoses      []Diagnosis `json:"diagnoses,omitempty"`
	// Class is cluster, node_local, apiserver, kubelet, external,
	// lb_health_check or unknown (see Class); always present.
	Class Class `json:"class"`
	// HealthCheckService is namespace/name of the Service whose
	// healthCheckNodePort a lb_health_check connection probed.
	HealthCheckService string `json:"health_check_service,omitempty"`
	// PodSource is how Pod was named: netns, ip_index or unnamed.
	PodSource PodSource `json:"pod_source,omitempty"`
	// PodIPDisagrees: the address index named another pod than the
	// socket's namespace (which is trusted).
	PodIPDisagrees bool `json:"pod_ip_disagrees,omitempty"`
	// NATNotVisible is the reason lbpath proved a Service translation it
	// could not see (diagnosis nat_not_visible).
	NATNotVisible string `json:"nat_not_visible,omitempty"`
	// ServiceSource is externalname_resolved when Service is an
	// ExternalName Service named from the agent's own DNS lookup.
	ServiceSource string `json:"service_source,omitempty"`
	// Ingress names the ingress proxy hop (Path.Ingress).
	Ingress *kube.IngressHop `json:"ingress,omitempty"`
}

// Record returns the JSON form of p.
func (p *Path) Record() Record {
	r := Record{Connection: p.Conn, Entry: string(p.Entry), EntryNode: p.EntryNode, PodNode: p.PodNode,
		PodZone: p.PodZone, ClientKind: string(p.Client.Kind), ClientLost: p.Client.Lost, CrossNode: p.CrossNode,
		NotReady: !p.EndpointReady, Terminating: p.EndpointTerminating, Diagnoses: p.Diagnoses, Class: p.Class,
		NATNotVisible: p.NATNotVisible, ServiceSource: p.ServiceSource, Ingress: p.Ingress}
	r.SNAT = p.SNAT
	r.PodSource, r.PodIPDisagrees = p.PodSource, p.PodIPDisagrees
	if p.Service != nil {
		r.Service = p.Service.Key()
	}
	if p.HealthCheck != nil {
		r.HealthCheckService = p.HealthCheck.Key()
	}
	if p.Pod != nil {
		r.Pod = p.Pod.Namespace + "/" + p.Pod.Name
		r.Deployment, r.ReplicaSet = p.Pod.Deployment, p.Pod.ReplicaSet
	}
	switch {
	case p.Client.Pod != nil:
		r.ClientName = p.Client.Pod.Namespace + "/" + p.Client.Pod.Name
	case p.Client.Node != nil:
		r.ClientName = p.Client.Node.Name
		r.ClientNodeAddr = string(p.Client.NodeAddr)
	}
	return r
}
