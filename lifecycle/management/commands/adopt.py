"""`manage.py adopt`: take over containers made outside the control plane, or give them back.

    manage.py adopt --mapping servers.csv            the plan (a dry run; nothing changes)
    manage.py adopt --mapping servers.csv --apply    adopt what the plan says
    manage.py adopt --vmid 5003 --apply              only these containers (repeatable)
    manage.py adopt --release 5003 5004              undo adoptions: rows gone, marks removed

The mapping file (CSV with a header line, or JSON: a list of objects) has one row per
container: vmid, owner, and optionally name (default: the container's hostname), kind (game),
variant, version, plan (default: the plan of the container's size), runtime,
runtime_version, code_server, port (the game or IDE port; a game server's is read from its
Velocity registration when left out). Containers carrying our tag for a server this database
does not know (after a restore from an older dump) need no mapping row: they describe
themselves. See `lifecycle/services/adoption/` and docs/operations.md.

Exit status: 0 when everything planned went through (a dry run always), 1 when an adoption or a
release failed, 2 for a bad mapping file.
"""
from __future__ import annotations

import json as jsonlib
import sys

from django.core.management.base import BaseCommand, CommandError

from lifecycle.services.adoption import (
    AdoptionRefused,
    ContainerPlan,
    MappingInvalid,
    Outcome,
    Verdict,
    adoption_apply,
    adoption_plan,
    adoption_release,
    mapping_load,
)
from lifecycle.services.audit import Actor
from edge.adoption import EdgeStep


class Command(BaseCommand):
    help = "Adopt containers made outside the control plane (dry run unless --apply)."

    def add_arguments(self, parser):
        parser.add_argument("--mapping", help="CSV or JSON file: VMID -> owner, name, kind, …")
        parser.add_argument("--apply", action="store_true",
                            help="adopt (without it: print the plan, change nothing)")
        parser.add_argument("--vmid", type=int, action="append", default=[],
                            help="only this container (repeatable)")
        parser.add_argument("--release", type=int, nargs="+", metavar="VMID",
                            help="undo the adoption of these containers")
        parser.add_argument("--parallel", type=int, default=4,
                            help="containers adopted at once (default 4)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, **opts):
        actor = Actor.system("manage.py adopt")
        if opts["release"]:
            return self._release(opts["release"], actor, opts["json"])
        try:
            mapping = mapping_load(opts["mapping"]) if opts["mapping"] else {}
        except MappingInvalid as err:
            for problem in err.problems:
                self.stderr.write(f"  - {problem}")
            self.stderr.write(f"adopt: {err}; nothing was changed")
            sys.exit(2)
        plan = adoption_plan(mapping, vmids=opts["vmid"] or None)
        if not opts["apply"]:
            if opts["json"]:
                self.stdout.write(jsonlib.dumps(plan.as_dict(), sort_keys=True, default=str))
            else:
                self._plan(plan)
            return
        outcomes = adoption_apply(plan, actor=actor, parallel=max(1, opts["parallel"]),
                                  progress=None if opts["json"] else self._progress)
        failed = [o for o in outcomes if o.result == "failed"]
        if opts["json"]:
            self.stdout.write(jsonlib.dumps({"outcomes": [o.__dict__ for o in outcomes],
                                             "calls": plan.calls}, sort_keys=True))
        else:
            counts: dict[str, int] = {}
            for o in outcomes:
                counts[o.result] = counts.get(o.result, 0) + 1
            self.stdout.write("adopt: " + ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
                              + ("" if not failed else
                                 " - run --apply again to carry on with the failed ones"))
            worked = [o for o in outcomes if o.calls]
            if worked:
                totals: dict[str, int] = {}
                for o in worked:
                    for system, n in o.calls.items():
                        totals[system] = totals.get(system, 0) + n
                self.stdout.write("calls per adopted server: " + ", ".join(
                    f"{system} {n / len(worked):.1f}" for system, n in sorted(totals.items()))
                    + f" (planning: {plan.calls})")
        if failed:
            sys.exit(1)

    # --- output ---------------------------------------------------------------------------------
    def _plan(self, plan) -> None:
        for problem in plan.problems:
            self.stdout.write(f"! {problem}")
        for cp in plan.containers:
            self.stdout.write(_plan_line(cp))
            for step in cp.edge:
                self.stdout.write(f"    edge: {EdgeStep.of(step).describe()}")
            for what in cp.already:
                self.stdout.write(f"    edge: {what} already ours")
            for warning in cp.warnings:
                self.stdout.write(f"    note: {warning}")
            if cp.verdict == Verdict.SKIP:
                for reason in cp.conflicts:
                    self.stdout.write(f"    conflict: {reason}")
        counts = plan.counts()
        self.stdout.write(
            f"plan: {counts['adopt']} to adopt, {counts['resume']} to carry on, "
            f"{counts['adopted']} adopted already, {counts['skip']} skipped; {plan.ours} "
            f"containers are ours already. Dry run: nothing changed (--apply to adopt). "
            f"Calls: {plan.calls}")

    def _progress(self, outcome: Outcome) -> None:
        self.stdout.write(f"CT {outcome.vmid} {outcome.name or ''}: {outcome.result}"
                          + (f" - {'; '.join(outcome.detail)}" if outcome.detail else ""))

    def _release(self, vmids: list[int], actor: Actor, as_json: bool) -> None:
        results, failed = {}, False
        for vmid in vmids:
            try:
                results[vmid] = {"released": True, "done": adoption_release(vmid, actor=actor)}
            except AdoptionRefused as err:
                failed = True
                results[vmid] = {"released": False, "error": str(err)}
        if as_json:
            self.stdout.write(jsonlib.dumps(results, sort_keys=True))
        else:
            for vmid, r in results.items():
                self.stdout.write(f"CT {vmid}: " + ("released - " + "; ".join(r["done"])
                                                    if r["released"] else f"not released: "
                                                                          f"{r['error']}"))
        if failed:
            raise CommandError("not released: " + "; ".join(
                r["error"] for r in results.values() if not r["released"]))


def _plan_line(cp: ContainerPlan) -> str:
    head = f"CT {cp.vmid} on {cp.node} ({cp.power}, hostname {cp.hostname or '-'})"
    if cp.verdict == Verdict.SKIP:
        return f"{head} -> skip"
    if cp.verdict == Verdict.ADOPTED:
        return f"{head} -> adopted already as {cp.name} ({cp.server_id})"
    if cp.verdict == Verdict.RESUME:
        return f"{head} -> carry on adopting {cp.name} ({cp.server_id})"
    what = (f"{cp.variant} {cp.version}" if cp.kind == "game"
            else f"{cp.runtime} {cp.runtime_version}")
    ports = ", ".join(f"{role} port {p}" for role, p in cp.ports.items())
    how = "by its tag, keeping server id " + str(cp.server_id) if cp.source == "tag" else \
        "from the mapping"
    return (f"{head} -> adopt {how} as {cp.kind} '{cp.name}' of {cp.owner}: {what}, plan "
            f"{cp.plan}; claims VMID {cp.vmid}, IP {cp.ip}, {ports}")
