#!/usr/bin/env bash
# patch-kube-network-policies.sh MODULE_DIR OUT_DIR: a copy of sigs.k8s.io/kube-network-policies
# (v0.8.0) whose nftables rules queue packets with the xtables NFQUEUE target (nft_compat) instead
# of nft's own `queue` expression. Run by scripts/kube's build; the copy is `replace`d in.
#
# Why: this kernel has CONFIG_NFT_QUEUE unset, so `nft add rule ... queue num 100` fails with
# "Could not process rule: No such file or directory", while CONFIG_NETFILTER_XT_TARGET_NFQUEUE=y
# and CONFIG_NFT_COMPAT=y (`iptables -j NFQUEUE` works). The verdicts still come through
# nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE=y), so nothing else changes.
set -euo pipefail
src=${1:?module dir} out=${2:?output dir}
rm -rf "$out"
cp -r "$src" "$out"
chmod -R u+w "$out"
pkg="$out/pkg/networkpolicy"
cat > "$pkg/nfqueue_xt.go" <<'EOF'
package networkpolicy

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// nfqueueTarget is `-j NFQUEUE --queue-num num [--queue-bypass]` as an nft_compat target:
// struct xt_NFQ_info_v3 {u16 queuenum; u16 queues_total; u16 flags}, native endian, padded to 8.
func nfqueueTarget(num uint16, bypass bool) *expr.Target {
	info := make([]byte, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1) // queues_total
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	u := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &u}
}
EOF
sed -i \
  -e 's|queue := &expr.Queue{Num: uint16(c.config.QueueID)}|queue := nfqueueTarget(uint16(c.config.QueueID), false)|' \
  -e 's|queue.Flag = expr.QueueFlagBypass|queue = nfqueueTarget(uint16(c.config.QueueID), true)|' \
  "$pkg/controller.go"
sed -i -e 's|&expr.Queue{Num: uint16(n.nfQueueID), Flag: expr.QueueFlagBypass}|nfqueueTarget(uint16(n.nfQueueID), true)|' \
  "$pkg/dnsagent.go"
if grep -n 'expr.Queue' "$pkg"/*.go | grep -v _test.go; then
  echo "patch-kube-network-policies: an nft queue expression is left (new upstream version?)" >&2
  exit 1
fi
# NRI (pod IPs straight from the runtime) needs containerd >= 1.7; the node runs 1.6, and
# github.com/containerd/nri v0.9.0 does not compile against the runtime-spec the control plane
# pins. scripts/kube-node/network-policies runs with NRIdisabled: a stub keeps the package whole.
cat > "$pkg/nri.go" <<'EOF'
package networkpolicy

import (
	"context"
	"errors"
)

type nriStub struct{}

func (nriStub) Run(context.Context) error { return nil }

type nriPlugin struct{ stub nriStub }

func NewNriPlugin() (*nriPlugin, error) { return nil, errors.New("NRI is not built in (scripts/kube)") }

func (p *nriPlugin) GetPodFromIP(string) string { return "" }
EOF
# The package's tests use the old expression and NRI; they are not built here.
rm -f "$pkg"/*_test.go
