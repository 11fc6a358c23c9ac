"""Manage Proxmox nodes and their pools.

    manage.py node add pve1 --memory-mb 65536 --cores 16 --subnet 10.10.1.0/24 \
        --gateway 10.10.1.1 --ports 30000-30999 [--ip-range 10.10.1.10-10.10.1.250]
    manage.py node list | enable NAME | disable NAME
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from lifecycle.models import Node
from lifecycle.selectors import node_capacity_list
from lifecycle.services.audit import Actor
from lifecycle.services.nodes import node_create, node_set_enabled


def _range(text: str, cast=int) -> tuple:
    try:
        lo, hi = text.split("-", 1)
        return cast(lo), cast(hi)
    except ValueError as exc:
        raise CommandError(f"{text!r} is not a range like A-B") from exc


class Command(BaseCommand):
    help = "Add, list, enable or disable Proxmox nodes."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        add = sub.add_parser("add")
        add.add_argument("name")
        add.add_argument("--memory-mb", type=int, required=True)
        add.add_argument("--cores", type=int, required=True)
        add.add_argument("--subnet", required=True)
        add.add_argument("--gateway", required=True)
        add.add_argument("--ports", required=True, help="port range, e.g. 30000-30999")
        add.add_argument("--ip-range", help="first-last container IP (default: whole subnet)")
        sub.add_parser("list")
        for verb in ("enable", "disable"):
            sub.add_parser(verb).add_argument("name")

    def handle(self, *args, verb, **opts):
        actor = Actor.system("manage.py node")
        if verb == "add":
            if Node.objects.filter(name=opts["name"]).exists():
                self.stdout.write(f"node {opts['name']} exists; left as it is")
                return
            try:
                node = node_create(
                    name=opts["name"], memory_mb=opts["memory_mb"], cores=opts["cores"],
                    subnet=opts["subnet"], gateway=opts["gateway"],
                    port_range=_range(opts["ports"]),
                    ip_range=_range(opts["ip_range"], str) if opts["ip_range"] else None,
                    actor=actor,
                )
            except (ValidationError, ValueError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"added node {node.name}")
        elif verb == "list":
            for node in node_capacity_list():  # a constant number of queries
                self.stdout.write(
                    f"{node['name']:10} {'enabled' if node['enabled'] else 'DISABLED':8} "
                    f"mem {node['allocated_memory_mb']}/{node['memory_mb']} MB  "
                    f"free ips {node['free_ips']}  free ports {node['free_ports']}"
                )
        else:
            node = Node.objects.filter(name=opts["name"]).first()
            if node is None:
                raise CommandError(f"no node named {opts['name']!r}")
            node_set_enabled(node=node, enabled=verb == "enable", actor=actor)
            self.stdout.write(f"node {node.name} {verb}d")
