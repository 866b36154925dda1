package k8s

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpath/lbpath/testbed"
)

// Service dns (Options.UDPService): a DNS-like UDP Service over web's pods,
// as an application that answers on UDP beside HTTP exposes it. web's pod
// template then declares a UDP containerPort (testbed.UDPPort), on which
// the kubelet stand-in runs testbed.StartUDPServer in the pod's namespace.
// The real kube-proxy programs its NAT from the API objects, like web's.
const (
	// UDPService is the Service's name, in Namespace.
	UDPService = "dns"
	// UDPPortName names the Service port and the containerPort.
	UDPPortName = "dns"
	// UDPServicePort is the port on the ClusterIP.
	UDPServicePort = 53
	// UDPNodePort is the Service's fixed NodePort.
	UDPNodePort = 30053
)

// udpClusterIP is dns's primary-family ClusterIP in the IPv4 layout (its
// IPv6 twin is testbed.To6 of it).
var udpClusterIP = netip.MustParseAddr("10.96.0.20")

// UDP is Service dns's addresses in the cluster's families (as testbed's
// Web), with the externalTrafficPolicy last set; ok is false without
// Options.UDPService.
func (c *Cluster) UDP() (svc testbed.Service, ok bool) {
	if !c.opt.UDPService {
		return testbed.Service{}, false
	}
	var ips []netip.Addr
	for _, f := range c.TB.Families() {
		if f == testbed.FamilyIPv6 {
			ips = append(ips, testbed.To6(udpClusterIP))
		} else {
			ips = append(ips, udpClusterIP)
		}
	}
	return testbed.Service{Namespace: Namespace, Name: UDPService, PortName: UDPPortName,
		ClusterIP: ips[0], ClusterIPs: ips, Port: UDPServicePort, NodePort: UDPNodePort,
		TargetPort: testbed.UDPPort, Policy: c.policy}, true
}

// createUDPService creates Service dns: type NodePort, one ClusterIP per
// family of the cluster, UDP 53 → testbed.UDPPort on web's pods.
func (c *Cluster) createUDPService(ctx context.Context) error {
	s, _ := c.UDP()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: UDPService},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeNodePort,
			ClusterIP:             s.ClusterIP.String(),
			ClusterIPs:            addrStrings(s.ClusterIP, s.ClusterIPs),
			IPFamilyPolicy:        familyPolicy(s.ClusterIPs),
			IPFamilies:            ipFamilies(s.ClusterIPs),
			Selector:              map[string]string{WebLabel: WebDeployment},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicy(c.policy),
			Ports: []corev1.ServicePort{{
				Name: UDPPortName, Protocol: corev1.ProtocolUDP, Port: UDPServicePort,
				TargetPort: intstr.FromInt32(testbed.UDPPort), NodePort: UDPNodePort,
			}},
		},
	}
	if _, err := c.Client.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s: %w", UDPService, err)
	}
	return nil
}

// udpContainerPort is the containerPort web's stand-in pods declare with
// Options.UDPService.
func udpContainerPort() corev1.ContainerPort {
	return corev1.ContainerPort{Name: UDPPortName, ContainerPort: testbed.UDPPort, Protocol: corev1.ProtocolUDP}
}

// servesUDP reports whether the pod declares a UDP containerPort, which
// the stand-in serves with testbed.StartUDPServer; that server answers on
// testbed.UDPPort only, so any other UDP port is an error.
func servesUDP(pod *corev1.Pod) (bool, error) {
	udp := false
	for _, ct := range pod.Spec.Containers {
		for _, p := range ct.Ports {
			if p.Protocol != corev1.ProtocolUDP {
				continue
			}
			if p.ContainerPort != testbed.UDPPort {
				return false, fmt.Errorf("pod %s/%s: UDP containerPort %d: the kubelet stand-in serves UDP on %d only",
					pod.Namespace, pod.Name, p.ContainerPort, testbed.UDPPort)
			}
			udp = true
		}
	}
	return udp, nil
}
