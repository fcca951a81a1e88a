"""The Python IDL peer of `cargo xtask bench ovn`: OVS's own Python IDL (Debian's
python3-openvswitch, what OpenStack Neutron uses) commits the benchmark's ports in one
transaction, as a careful operator or peer would.

Usage: ovn_idl.py SCHEMA REMOTE PORTS_JSON
PORTS_JSON: [{"switch": ..., "name": ..., "address": "MAC IP", "pod": ...}, ...]
Prints the seconds from the transaction's first row to the commit's reply and the change
seen back by the IDL (its initial sync is not timed, as Sidelane's is not).
"""

import json
import sys
import time

import ovs.db.idl
import ovs.poller


def run_until(idl, done):
    while not done():
        idl.run()
        if done():
            return
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


def main():
    schema, remote, ports_path = sys.argv[1:4]
    with open(ports_path, encoding="utf-8") as f:
        ports = json.load(f)
    helper = ovs.db.idl.SchemaHelper(location=schema)
    helper.register_table("Logical_Switch")
    helper.register_table("Logical_Switch_Port")
    idl = ovs.db.idl.Idl(remote, helper)
    run_until(idl, lambda: idl.has_ever_connected() and idl.change_seqno > 0)
    switches = {row.name: row for row in idl.tables["Logical_Switch"].rows.values()}
    start = time.monotonic()
    txn = ovs.db.idl.Transaction(idl)
    for p in ports:
        lsp = txn.insert(idl.tables["Logical_Switch_Port"])
        lsp.name = p["name"]
        lsp.addresses = [p["address"]]
        lsp.port_security = [p["address"]]
        lsp.external_ids = {"pod": p["pod"]}
        switches[p["switch"]].addvalue("ports", lsp.uuid)
    status = txn.commit_block()
    if status != ovs.db.idl.Transaction.SUCCESS:
        print(f"the transaction ended {status}: {txn.get_error()}", file=sys.stderr)
        sys.exit(1)
    expected = len(ports)
    run_until(idl, lambda: len(idl.tables["Logical_Switch_Port"].rows) >= expected)
    print(f"{time.monotonic() - start:.6f}")
    idl.close()


if __name__ == "__main__":
    main()
