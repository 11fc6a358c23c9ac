#!/usr/bin/env python
"""Run every benchmark and print one table of their headline figures.

    .venv/bin/python bench/run_all.py [--quick]

Each benchmark is run as its own process (it makes and drops its own throwaway database);
their full outputs are printed too. Figures on a shared machine are noisy: the counts (queries,
calls per operation) are the stable ones.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("create_storm", ["--procs", "8", "--per-proc", "50"], ["--procs", "4", "--per-proc", "20"]),
    ("provision_throughput", ["--servers", "40"], ["--servers", "15", "--workers", "1,4"]),
    ("edge_observe", [], ["--servers", "100,2000"]),
    ("reconcile_scale", [], ["--sizes", "1000,5000"]),
    ("backup_schedule", [], ["--servers", "200"]),
    ("server_schedules", [], ["--servers", "500"]),
    ("fleet_views", [], ["--sizes", "1000", "--repeat", "3"]),
    ("adopt", [], ["--servers", "200"]),
    ("burst", [], ["--servers", "30"]),
]
PICK = {
    "create_storm": [("creates per second", r"creates per second\s+([\d.]+)"),
                     ("statements per create", r"statements per create\s+median (\d+)"),
                     ("statements per replay", r"statements per replay\s+median (\d+)")],
    "provision_throughput": [("provisions/s (last row)", r"^\s+\d+\s+\d+\s+[\d.]+\s+([\d.]+)"),
                             ("PVE calls per provision", r"^\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+([\d.]+)")],
    "edge_observe": [("Cloudflare calls, 2000 servers, page 1000",
                      r"^\s+2000\s+1000\s+(\d+)"),
                     ("Technitium + Velocity calls", r"^\s+2000\s+\d+\s+\d+\s+(\d+)")],
    "reconcile_scale": [("cycle seconds at largest size", r"^\s+\d+\s+([\d.]+)"),
                        ("queries per cycle", r"^\s+\d+\s+[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+\d+\s+(\d+)")],
    "backup_schedule": [("most backups in flight per node", r"in flight per node: (\{.*?\})"),
                        ("Proxmox calls per scheduled backup",
                         r"calls per scheduled backup: ([\d.]+)")],
    "server_schedules": [("decisions per second", r"(\d+) decisions/s"),
                         ("queries per decision", r"queries per decision: ([\d.]+)"),
                         ("servers restarted twice", r"servers with two: (\d+)")],
    "fleet_views": [("overview queries / ms at the largest size",
                     r"^\s+\d+\s+(\d+\s+\d+)\s+\d+\s+\d+"),
                    ("scrape queries / ms at the largest size",
                     r"^\s+\d+\s+\d+\s+\d+\s+(\d+\s+\d+)")],
    "burst": [("all running / one alone", r"running\s+[\d.]+ s\s+\(([\d.]+)x"),
              ("worker RSS peak MB", r"RSS idle / peak\s+\d+ / (\d+) MB")],
    "adopt": [("apply seconds", r"^apply: ([\d.]+) s"),
              ("calls per adopted server", r"^calls per adopted server: (.*)$")],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    table = []
    for name, full, quick in BENCHES:
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(HERE / f"{name}.py"),
                                 *(quick if args.quick else full)],
                                capture_output=True, text=True, timeout=1800)
        print(f"=== {name} ({time.monotonic() - started:.0f} s, exit {result.returncode})")
        print(result.stdout.strip() or result.stderr[-2000:])
        for label, pattern in PICK[name]:
            found = re.findall(pattern, result.stdout, re.M)
            table.append((name, label, found[-1] if found else "n/a"))
    print(f"\n=== figures ({platform.node()}, {platform.machine()}, Python "
          f"{platform.python_version()})")
    width = max(len(f"{n}: {label}") for n, label, _ in table)
    for name, label, value in table:
        print(f"  {(name + ': ' + label).ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
