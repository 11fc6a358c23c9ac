"""The machinery that runs operations, apart from the business services that request them.

    tasks.execute_operation ─▶ runner.operation_run ─▶ claim (statemachines.operation)
                                     │                   ─▶ flows/<kind> (from operation_kinds)
                                     │                        └▶ steps/{proxmox,agent,edge,…}
                                     └▶ retry later / fail / errored, with the flow's on_failure
    sweeper: re-sends lost messages, takes over expired leases, purges, frees quarantine.

Services (`lifecycle/services/`) never import this package: they write the operation row and
send its message by task name; the worker imports services, never the other way round.
"""
