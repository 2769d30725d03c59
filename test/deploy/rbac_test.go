package deploy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// wantRules is the complete RBAC of the agent (DESIGN section 7): its own
// and the other Nodes (cluster-wide), the ServiceCIDRs (cluster-wide, read
// only), the API server's EndpointSlice
// (default/kubernetes), Events in its own namespace, and get of its Pod and
// DaemonSet (the uninstall path). Nothing else: no Secrets, no listing of
// Pods, no writes but Event creation.
var wantRules = []string{
	"ClusterRole ts-node-agent: groups=[] resources=[nodes] names=[] verbs=[get list watch]",
	"ClusterRole ts-node-agent: groups=[networking.k8s.io] resources=[servicecidrs] names=[] verbs=[get list watch]",
	"Role default/ts-node-agent-apiserver-endpoints: groups=[discovery.k8s.io] resources=[endpointslices] names=[kubernetes] verbs=[get list watch]",
	"Role ts-node-agent/ts-node-agent-events: groups=[] resources=[events] names=[] verbs=[create]",
	"Role ts-node-agent/ts-node-agent-uninstall: groups=[] resources=[pods] names=[] verbs=[get]",
	"Role ts-node-agent/ts-node-agent-uninstall: groups=[apps] resources=[daemonsets] names=[] verbs=[get]",
}

func ruleStrings(kind, name string, rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		sorted := func(s []string) string {
			s = slices.Clone(s)
			slices.Sort(s)
			return strings.Join(s, " ")
		}
		groups := sorted(r.APIGroups)
		out = append(out, fmt.Sprintf("%s %s: groups=[%s] resources=[%s] names=[%s] verbs=[%s]",
			kind, name, groups, sorted(r.Resources), sorted(r.ResourceNames), sorted(r.Verbs)))
		if len(r.NonResourceURLs) > 0 {
			out = append(out, fmt.Sprintf("%s %s: nonResourceURLs=%v", kind, name, r.NonResourceURLs))
		}
	}
	return out
}

// TestRBACLeastPrivilege: the rendered roles grant exactly wantRules, every
// role is bound to the agent's ServiceAccount only, and every binding points
// at one of these roles.
func TestRBACLeastPrivilege(t *testing.T) {
	for _, v := range daemonSetVariants {
		t.Run(v.name, func(t *testing.T) {
			o := render(t, v.dir)
			var got []string
			roles := map[string]bool{}
			for _, r := range o.ClusterRoles {
				got = append(got, ruleStrings("ClusterRole", r.Name, r.Rules)...)
				roles["ClusterRole "+r.Name] = true
				if r.AggregationRule != nil {
					t.Errorf("ClusterRole %s aggregates other roles", r.Name)
				}
			}
			for _, r := range o.Roles {
				got = append(got, ruleStrings("Role", r.Namespace+"/"+r.Name, r.Rules)...)
				roles["Role "+r.Namespace+"/"+r.Name] = true
			}
			slices.Sort(got)
			if !slices.Equal(got, wantRules) {
				t.Errorf("RBAC rules:\n  %s\nwant exactly:\n  %s", strings.Join(got, "\n  "), strings.Join(wantRules, "\n  "))
			}

			sa := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: agentName, Namespace: agentNamespace}
			bound := map[string]bool{}
			check := func(binding string, ref rbacv1.RoleRef, subjects []rbacv1.Subject, ns string) {
				if len(subjects) != 1 || subjects[0] != sa {
					t.Errorf("%s binds %v, want only the ServiceAccount %s/%s", binding, subjects, sa.Namespace, sa.Name)
				}
				if ref.APIGroup != rbacv1.GroupName {
					t.Errorf("%s: roleRef.apiGroup %q", binding, ref.APIGroup)
				}
				key := ref.Kind + " " + ref.Name
				if ref.Kind == "Role" {
					key = ref.Kind + " " + ns + "/" + ref.Name
				}
				if !roles[key] {
					t.Errorf("%s refers to %s, which the manifests do not define", binding, key)
				}
				bound[key] = true
			}
			for _, b := range o.ClusterRoleBindings {
				check("ClusterRoleBinding "+b.Name, b.RoleRef, b.Subjects, "")
			}
			for _, b := range o.RoleBindings {
				if b.RoleRef.Kind != "Role" {
					t.Errorf("RoleBinding %s/%s binds a %s: bind only the namespaced Roles", b.Namespace, b.Name, b.RoleRef.Kind)
				}
				check("RoleBinding "+b.Namespace+"/"+b.Name, b.RoleRef, b.Subjects, b.Namespace)
			}
			for r := range roles {
				if !bound[r] {
					t.Errorf("%s is not bound to the agent", r)
				}
			}
		})
	}
}
