package k8s

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// Names of the cluster DNS objects, as kubeadm names them.
const (
	DNSNamespace  = "kube-system"
	DNSService    = "kube-dns"
	DNSDeployment = "coredns"
	dnsLabel      = "k8s-app"
)

// corefile serves the cluster domain from the API (Services, and Pods by
// IP-derived names) with the probes' health and ready endpoints, and
// `CH TXT hostname.bind` with the answering pod's name (chaos), which is how
// a test knows which pod answered a query through the ClusterIP. There is no
// forward plugin (see testbed/corednsbin): other names fail, as nothing
// upstream is reachable.
var corefile = fmt.Sprintf(`.:53 {
    errors
    chaos
    health {
        lameduck 5s
    }
    ready
    kubernetes %s in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
}
`, ClusterDomain)

// createDNS installs CoreDNS the way a cluster installer does: a
// ServiceAccount with read access to Services, EndpointSlices, Pods and
// Namespaces, the Corefile in a ConfigMap, a Deployment of replicas pods
// running image, and
// Service kube-dns at DNSServiceIP (the kubelets' clusterDNS).
func createDNS(ctx context.Context, client kubernetes.Interface, image string, replicas int) error {
	labels := map[string]string{dnsLabel: DNSService}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: DNSNamespace, Name: name, Labels: labels}
	}
	if _, err := client.CoreV1().ServiceAccounts(DNSNamespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: meta(DNSDeployment)}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CoreDNS ServiceAccount: %w", err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns", Labels: labels},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CoreDNS ClusterRole: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns", Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: DNSNamespace, Name: DNSDeployment}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CoreDNS ClusterRoleBinding: %w", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: meta(DNSDeployment), Data: map[string]string{"Corefile": corefile}}
	if _, err := client.CoreV1().ConfigMaps(DNSNamespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CoreDNS ConfigMap: %w", err)
	}
	if _, err := client.AppsV1().Deployments(DNSNamespace).Create(ctx, dnsDeployment(image, replicas), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CoreDNS Deployment: %w", err)
	}
	svc := &corev1.Service{
		ObjectMeta: meta(DNSService),
		Spec: corev1.ServiceSpec{
			Selector:   labels,
			ClusterIP:  DNSServiceIP.String(),
			ClusterIPs: []string{DNSServiceIP.String()},
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	if _, err := client.CoreV1().Services(DNSNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Service %s: %w", DNSService, err)
	}
	return nil
}

// dnsDeployment runs replicas CoreDNS pods (at least 1).
func dnsDeployment(image string, replicas int) *appsv1.Deployment {
	labels := map[string]string{dnsLabel: DNSService}
	n := int32(max(replicas, 1))
	no, yes := false, true
	// One CoreDNS pod per node. kubeadm only prefers that; required, the
	// placement is known (a test asks for at most one pod per node).
	spread := &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
			LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
			TopologyKey:   corev1.LabelHostname,
		}},
	}}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: DNSNamespace, Name: DNSDeployment, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: DNSDeployment,
					PriorityClassName:  "system-cluster-critical",
					Affinity:           spread,
					// The node's resolver, not itself.
					DNSPolicy: corev1.DNSDefault,
					Containers: []corev1.Container{{
						Name:            "coredns",
						Image:           image,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
						LivenessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/health", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 10, FailureThreshold: 5,
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/ready", Port: intstr.FromInt32(8181)}},
							PeriodSeconds: 1,
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: &no,
							ReadOnlyRootFilesystem:   &yes,
							Capabilities: &corev1.Capabilities{
								Add:  []corev1.Capability{"NET_BIND_SERVICE"},
								Drop: []corev1.Capability{"ALL"},
							},
						},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{
						ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: DNSDeployment},
						},
					}}},
				},
			},
		},
	}
}
