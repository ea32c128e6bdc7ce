#!/usr/bin/env bash
# Gives a spoke cluster tether's impersonate-only ServiceAccount (deploy/spoke/rbac.yaml, the same manifest the
# real DaemonSet install uses) and writes a kubeconfig for it: what tunnel-client holds on a real spoke.
#
# The spoke's identity policy never passes the hub's system:masters, so a hub admin has no rights on the spoke
# until the spoke grants them: each HUB_USER given is bound to cluster-admin here (ClusterRoleBinding
# tether:hub-admins, under the name the default policy maps it to: its own), and the grant is printed.
#
# Usage: spoke-credentials.sh ADMIN_KUBECONFIG OUT_KUBECONFIG [HUB_USER...]
# Env: KUBECTL (default: the 1.20 kubectl in $TETHER_CACHE/kube-1.20.2, matching the dev clusters).
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: spoke-credentials.sh ADMIN_KUBECONFIG OUT_KUBECONFIG [HUB_USER...]" >&2; exit 2; }
ADMIN=$1 OUT=$2
shift 2
HUB_ADMINS=("$@")
KUBECTL=${KUBECTL:-${TETHER_CACHE:-/var/cache/tether}/kube-1.20.2/kubectl}
RBAC=$(dirname "$(readlink -f "$0")")/../spoke/rbac.yaml
ka() { "$KUBECTL" --kubeconfig "$ADMIN" "$@"; }

ka apply -f "$RBAC" >/dev/null

if [ ${#HUB_ADMINS[@]} -gt 0 ]; then
  {
    printf 'apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: "tether:hub-admins"}\n'
    printf 'roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\nsubjects:\n'
    for user in "${HUB_ADMINS[@]}"; do printf -- '- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "%s"}\n' "$user"; done
  } | ka apply -f - >/dev/null
  cluster=$(ka config view --minify -o 'jsonpath={.clusters[0].name}')
  echo "spoke $cluster: granted cluster-admin to hub user(s) ${HUB_ADMINS[*]} (ClusterRoleBinding tether:hub-admins)"
fi

# The token controller mints the Secret asynchronously (and Kubernetes >= 1.24 never does: there, create a
# kubernetes.io/service-account-token Secret annotated with the SA name instead).
secret=
for _ in $(seq 150); do  # 30 s
  secret=$(ka -n tether-system get serviceaccount tether-client -o 'jsonpath={.secrets[0].name}')
  [ -z "$secret" ] || break
  sleep 0.2
done
[ -n "$secret" ] || { echo "spoke-credentials.sh: no token Secret for tether-client after 30 s" >&2; exit 1; }

token=$(ka -n tether-system get secret "$secret" -o 'jsonpath={.data.token}' | base64 -d)
ca=$(ka -n tether-system get secret "$secret" -o 'jsonpath={.data.ca\.crt}')
server=$(ka config view --minify -o 'jsonpath={.clusters[0].cluster.server}')
[[ -n $token && -n $ca && -n $server ]] || { echo "spoke-credentials.sh: incomplete Secret $secret" >&2; exit 1; }

# Written aside and renamed, so a reader never sees half a file; private, since it holds a bearer token.
umask 077
cat >"$OUT.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: spoke
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: tether-client
  user:
    token: $token
contexts:
- name: tether-client
  context: {cluster: spoke, user: tether-client, namespace: tether-system}
current-context: tether-client
EOF
mv "$OUT.tmp" "$OUT"
