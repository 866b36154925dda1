package flow

import (
	"testing"

	"github.com/lbpath/lbpath/agent/capture"
)

// TestUDPSocketLBJoin: a connected UDP socket's connect() translated by a
// socket-LB (the Service dialled, the pod as peer) marks the client flow
// of that four-tuple and netns: target = the Service, socket_lb, no NAT.
// A second flow of the same socket joins it too, and so does the flow of
// a later socket that reused the four-tuple after its own translated
// connect(), even when the first socket's flow comes after that; a flow
// that began before any connect(), a flow in another netns and a server
// flow do not.
func TestUDPSocketLBJoin(t *testing.T) {
	tb, recs, _ := newUDPTest()
	for _, at := range []uint64{100, 200} {
		tb.Connect(&capture.Event{Type: capture.EventConnect, UDP: true, Netns: 7, Local: uClient, Remote: uPod, Dialed: uVIP, StartNs: at, TimeNs: at + 1})
	}
	flows := []capture.UDPFlow{
		{Side: capture.SideClient, Netns: 7, Cookie: 11, Local: uClient, Remote: uPod, FirstNs: 110, LastNs: 150, BytesOut: 10, BytesIn: 20},
		{Side: capture.SideClient, Netns: 7, Cookie: 12, Local: uClient, Remote: uPod, FirstNs: 210, LastNs: 250},
		{Side: capture.SideClient, Netns: 7, Cookie: 10, Local: uClient, Remote: uPod, FirstNs: 50, LastNs: 60},
		{Side: capture.SideClient, Netns: 8, Cookie: 13, Local: uClient, Remote: uPod, FirstNs: 110, LastNs: 150},
		{Side: capture.SideServer, Netns: 7, Cookie: 14, Local: uPod, Remote: uClient, FirstNs: 110, LastNs: 150},
	}
	for i := range flows {
		tb.Flow(&flows[i])
	}
	if len(*recs) != len(flows) {
		t.Fatalf("records %+v", *recs)
	}
	for i, c := range *recs {
		want := i < 2
		if c.SocketLB != want || (want && (c.Dialed != uVIP || c.Target != uVIP || c.NAT != nil || c.PodDst != uPod)) {
			t.Errorf("flow %d: socket_lb %v dialed %v target %v NAT %v pod %v, want translated %v", i, c.SocketLB, c.Dialed, c.Target, c.NAT, c.PodDst, want)
		}
		if !want && c.Dialed.IsValid() {
			t.Errorf("flow %d: dialed %v", i, c.Dialed)
		}
	}
	if tb.Stats.SocketLB.Load() != 2 {
		t.Errorf("socket_lb count %d", tb.Stats.SocketLB.Load())
	}
}
