"""``iscsifs discover`` / ``node`` / ``login`` against the private tgtd: discovery records
nodes, rediscovery keeps per-node overrides, logins use the record's settings."""

from __future__ import annotations

from helpers import ok, one_error_line, run_iscsifs, show_node

T1 = "iqn.2026-11.org.iscsifs.test:node-a"


def test_discover_records_nodes_and_rediscovery_keeps_overrides(fresh_target, tmp_path):
    a = fresh_target()
    b = fresh_target()
    d = tmp_path / "cfg"
    r = ok(run_iscsifs(d, "discover", a.portal))
    lines = r.stdout.splitlines()
    assert f"{a.portal},1 {a.iqn}" in lines and f"{a.portal},1 {b.iqn}" in lines
    listed = ok(run_iscsifs(d, "node")).stdout.splitlines()
    assert f"{a.portal},1 {a.iqn}" in listed and f"{a.portal},1 {b.iqn}" in listed
    keys = show_node(d, a.iqn, a.portal)
    assert keys["node.discovery_type"] == "send_targets"
    assert keys["node.discovery_address"] == a.host
    assert keys["node.discovery_port"] == str(a.port)
    assert ok(run_iscsifs(d, "discovery")).stdout.splitlines() == [f"{a.portal} via sendtargets"]

    ok(run_iscsifs(d, "node", "-T", a.iqn, "-p", a.portal, "-o", "update",
           "-n", "node.conn[0].timeo.noop_out_interval", "-v", "17"))
    ok(run_iscsifs(d, "node", "-T", a.iqn, "-p", a.portal, "-o", "update",
           "-n", "node.startup", "-v", "automatic"))
    ok(run_iscsifs(d, "discover", a.portal))                     # rediscovery
    ok(run_iscsifs(d, "discovery", "-t", "sendtargets", "-p", a.portal))   # iscsiadm spelling
    keys = show_node(d, a.iqn, a.portal)
    assert keys["node.conn[0].timeo.noop_out_interval"] == "17"
    assert keys["node.startup"] == "automatic"

    # the record's settings are what a login uses
    r = ok(run_iscsifs(d, "login", "-T", a.iqn, "-p", a.portal))
    assert r.stdout.splitlines()[-1] == (
        f"Login to [iface: default, target: {a.iqn}, portal: {a.host},{a.port}] successful.")
    r = ok(run_iscsifs(d, "login", "-L", "automatic"))
    assert len(r.stdout.splitlines()) == 2                # only the automatic record

    # a hand-added node (as for targets that refuse discovery) survives a discovery delete
    ok(run_iscsifs(d, "node", "-T", T1, "-p", a.portal, "-o", "new"))
    ok(run_iscsifs(d, "discovery", "-p", a.portal, "-o", "delete"))
    assert ok(run_iscsifs(d, "node")).stdout.splitlines() == [f"{a.portal},1 {T1}"]
    one_error_line(run_iscsifs(d, "discovery"), 21)
    # a login to a target that does not exist: 19 (target not found)
    line = one_error_line(run_iscsifs(d, "login", "-T", T1), 19)
    assert T1 in line
