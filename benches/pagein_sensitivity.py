"""How far each page-in cost moves the snp-pagein rate, and what value it would need to land in
the published band (issue 13's fidelity gap, README "Which assumptions decide the result").

For one configuration (default: the seed's 1 x (128 vCPUs, 512 GiB)), each policy is run at the
profile's values and then with each cost doubled, one at a time (`assume=NAME=2x`). The script
prints the rate, the elasticity (d log rate / d log cost, from the doubling) and the value that
alone would bring the rate down to the band's top: when slots_lock is saturated the rate is bytes
per change / section and each cost adds to the section linearly, so the doubling gives the
section's growth per unit of the cost and the value follows (exact for costs inside the section,
as long as the section stays saturated). This is a diagnostic of the model, not a fit: the profile
is not changed by it.

Run: OPENBLAS_NUM_THREADS=1 python benches/pagein_sensitivity.py [GUESTS MEMORY [NAME,NAME...]]
(not collected by pytest; ~8 s per run at 1 x 512 GiB, 2 x (1 + names) runs).
"""

from __future__ import annotations

import math
import sys

from sevsim import Host, scenarios
from sevsim.scenarios.snp_pagein import PUBLISHED, configurations

#: the costs of the per-VM serial section (slots_lock held) first, then ones outside it
DEFAULT_NAMES = ["attr_per_gfn", "attr_1g_scan_step", "attr_memory_bound", "attr_dm_pages_per_4m",
                 "attr_check_per_gfn", "attr_ioctl", "mmu_write_section", "userspace_roundtrip",
                 "shmem_discard", "psc_exit", "npf_map", "guest_fault"]


def rate(guests: str, mem: str, strategy: str, assume: str = "") -> dict:
    tab = scenarios.run("snp-pagein", strategies=strategy, reps=1, seed=0, guests=guests, vcpus="128",
                        guest_memory=mem, era="2024", assume=assume)
    return tab.rows[0]


def main(argv: list[str]) -> None:
    guests, mem = (argv[1], argv[2]) if len(argv) > 2 else ("1", "512GiB")
    names = argv[3].split(",") if len(argv) > 3 else DEFAULT_NAMES
    (g, v, nbytes, _), = configurations(guests, "128", mem)
    profile = Host.from_preset("epyc-9754-2s").kvm_cost
    for strategy in ("presplit", "on_demand"):
        base = rate(guests, mem, strategy)
        pub = PUBLISHED.get((g, v, nbytes), {}).get(strategy)
        top = max(pub) if pub else None
        print(f"\n{guests} x (128, {mem}) {strategy}: {base['pagein_gbps']:.2f} GB/s, section {base['section_us']:.1f} us"
              + (f"; published {min(pub):.2f}-{top:.2f}" if pub else ""))
        print(f"{'cost':27} {'value':>9} {'rate at 2x':>10} {'elasticity':>10} {'value for the band top':>24}")
        for name in names:
            # in the profile's unit (ns for NAME_ns keys), as `assume` takes it
            key = name + "_ns" if name + "_ns" in profile else name
            value = float(profile[key])
            r2 = rate(guests, mem, strategy, f"{key}={2 * value!r}")["pagein_gbps"]
            e = math.log(r2 / base["pagein_gbps"]) / math.log(2)
            need = "-"
            # saturated, the rate is bytes / section and each cost adds to the section linearly:
            # the doubling gives the section's growth per unit of the cost
            grow = base["pagein_gbps"] / r2 - 1
            if top and grow > 1e-4 and base["pagein_gbps"] > top:
                x = 1 + (base["pagein_gbps"] / top - 1) / grow
                need = f"{value * x:.4g} ({x:.2f}x)"
            print(f"{key:27} {value:>9.4g} {r2:>10.2f} {e:>10.3f} {need:>24}")


if __name__ == "__main__":
    main(sys.argv)
