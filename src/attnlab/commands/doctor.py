"""doctor: short probes of the training set-up a run config describes (the same arguments as
train), each printing one line that names a problem and its fix; exit code 0 when every probe
passes, 1 when one finds something (training/doctor.py has the probes and the Python API)."""

import dataclasses
import tempfile
from pathlib import Path

from ..training.doctor import PROBES, diagnose, setup_from_run
from ..training.tasks import resolve_run
from .common import load_run_config, print_json, run_config_arguments, run_overrides


def register(sub):
    p = sub.add_parser("doctor", help="probe the training set-up of a run config for common bugs before a long run")
    run_config_arguments(p)
    p.add_argument("--probe", action="append", choices=list(PROBES), metavar="NAME",
                   help=f"run only this probe (repeatable): {', '.join(PROBES)}")
    p.add_argument("--verbose", action="store_true", help="also print an ok line for each probe that passed")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(run=doctor)


def doctor(args) -> int:
    run = resolve_run(load_run_config(args.config, run_overrides(args)))
    with tempfile.TemporaryDirectory(prefix="attnlab-doctor-") as work:  # the data cache, gone afterwards
        findings = diagnose(setup_from_run(run, Path(work)), args.probe)
    healthy = all(f.healthy for f in findings)
    if args.json:
        print_json({"healthy": healthy, "findings": [dataclasses.asdict(f) for f in findings]})
    else:
        for finding in findings:
            if args.verbose or not finding.healthy:
                print(finding.line())
        if healthy and not args.verbose:
            print(f"ok: all {len(findings)} probe(s) passed")
    return 0 if healthy else 1
