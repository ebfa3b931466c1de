#!/usr/bin/env python3
"""The report of a scripts/bench-mount run: report.md and charts/*.png in the run's folder,
from its raw.tsv (and machine.txt). Re-run it on old results at will.

    scripts/bench-report.py OUT_DIR

raw.tsv has one line per measurement (system, metric, repetition, value or "fail") and the
run's settings as system "param". Tables show medians over the repetitions and, in
parentheses, the ratio to plain S3 measured in the same run (to a local volume for Docker).
"""

import math
import os
import statistics
import sys
from collections import defaultdict

ORDER = ["s3", "bindfs", "s3vol", "s3fs", "rclone", "local"]
PEERS = ["s3fs", "rclone"]
COLORS = {"s3": "#7f7f7f", "bindfs": "#c7c7c7", "s3vol": "#1f77b4", "s3fs": "#ff7f0e",
          "rclone": "#2ca02c", "local": "#9467bd"}
DEFAULT_LABELS = {"s3": "plain S3", "bindfs": "bindfs over tmpfs (FUSE ceiling)",
                  "s3fs": "s3fs-fuse", "rclone": "rclone mount", "local": "local volume"}
# Linear growth of `ls -l`: cost per object at the largest folder at most this times the cost
# per object at 10,000 objects (our reading of "growing linearly" in issue #4).
LINEAR_SLACK = 1.2


class Run:
    def __init__(self, folder):
        self.folder = folder
        self.data = defaultdict(list)  # (system, metric) -> values, None for a failure
        self.params = {}
        with open(os.path.join(folder, "raw.tsv")) as f:
            next(f)
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 4:
                    continue
                sys_, metric, _rep, value = parts[:4]
                if sys_ == "param":
                    self.params[metric] = value
                else:
                    self.data[sys_, metric].append(None if value == "fail" else float(value))
        self.machine = {}
        path = os.path.join(folder, "machine.txt")
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(": ")
                    self.machine[key] = value.strip()
        self.systems = [s for s in ORDER if any(k[0] == s for k in self.data)]

    def values(self, sys_, metric):
        return [v for v in self.data.get((sys_, metric), []) if v is not None]

    def failed(self, sys_, metric):
        return sum(1 for v in self.data.get((sys_, metric), []) if v is None)

    def median(self, sys_, metric):
        """The median, "fail" when every repetition failed, None when not measured."""
        if (sys_, metric) not in self.data:
            return None
        vals = self.values(sys_, metric)
        return statistics.median(vals) if vals else "fail"

    def label(self, sys_):
        return self.params.get(f"label_{sys_}", DEFAULT_LABELS.get(sys_, sys_))

    def param_int(self, name, default=0):
        try:
            return int(self.params.get(name, default))
        except ValueError:
            return default


def num(v, unit):
    if unit == "s":
        return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if unit in ("mibs", "mib", "iops"):
        return f"{v:.1f}" if v < 10 else f"{v:.0f}"
    return f"{v:g}"


def is_num(v):
    return isinstance(v, float) or isinstance(v, int)


def cell(run, sys_, metric, unit, base=None):
    v = run.median(sys_, metric)
    if v is None:
        return "-"
    if v == "fail":
        return "fail"
    text = num(v, unit)
    if run.failed(sys_, metric):
        text += f" ({run.failed(sys_, metric)} failed)"
    if is_num(base) and base > 0:
        r = v / base
        text += f" ({r:.2f}x)" if r < 10 else f" ({r:.1f}x)"
    return text


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(["---"] * len(headers)) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def verdict(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def ratio(a, b):
    return a / b if is_num(a) and is_num(b) and b > 0 else None


# ---------------------------------------------------------------- groups

class Group:
    """A workload group: columns (metric, header, unit, higher is better, s3 baseline metric)."""

    def __init__(self, key, title, columns, note=""):
        self.key, self.title, self.columns, self.note = key, title, columns, note


def groups(run):
    sizes = [int(n) for n in run.params.get("ls_sizes", "").split()] or sorted(
        {int(m[3:-2]) for (_, m) in run.data if m.startswith("ls_") and m[3:-2].isdigit()})
    small = run.param_int("small")
    tar_files = run.param_int("tar_files")
    par_mib = run.param_int("par_mib")
    size = run.params.get("size_mib", "?")
    return [
        Group("sequential", "Sequential read and write", [
            ("cold_mibs", f"cold read {size} MiB (MiB/s)", "mibs", True, "cold_mibs"),
            ("warm_mibs", "warm re-read (MiB/s)", "mibs", True, "warm_mibs"),
            ("write_mibs", "write + fsync (MiB/s)", "mibs", True, "write_mibs"),
        ], "Plain S3: one curl GET / PUT of the whole object. Warm: the same `cat` right after "
           "the cold one (s3vol keeps the page cache of unchanged files)."),
        Group("parallel", "4 readers at once, and memory", [
            ("par4_mibs", f"4 x {par_mib} MiB, cold (MiB/s, aggregate)", "mibs", True, "par4_mibs"),
            ("rss_peak_mib", "peak RSS of the daemon (MiB)", "mib", False, None),
        ], "Plain S3: 4 curl GETs at once. RSS: VmRSS of the FUSE daemon sampled every 100 ms "
           "during the 4 readers, fresh mount."),
        Group("random", "Random reads (fio)", [
            ("rand4k_cold_iops", "4 KiB cold (IOPS)", "iops", True, "rand4k_iops"),
            ("rand4k_warm_iops", "4 KiB warm (IOPS)", "iops", True, "rand4k_iops"),
            ("rand256k_cold_mibs", "256 KiB cold (MiB/s)", "mibs", True, "rand256k_mibs"),
            ("rand256k_warm_mibs", "256 KiB warm (MiB/s)", "mibs", True, "rand256k_mibs"),
        ], f"fio randread, psync, buffered, one job, on the {size} MiB file: cold on a fresh mount "
           f"after dropping caches, at most {run.params.get('fio_secs', '?')} s and "
           f"{run.params.get('fio4k_mib', '?')} MiB (4 KiB) / {run.params.get('fio256k_mib', '?')} "
           "MiB (256 KiB); warm: the same offsets again. fio drops the file's page cache before "
           "each job, so warm is served by the daemon's own cache. Plain S3: sequential boto3 "
           "ranged GETs at random aligned offsets on one connection (requests/s; MiB/s), under "
           "the same bounds; one figure, the base of both cold and warm. Plain S3 reads only what "
           "is asked, with no read-ahead or cache: a ratio far above 1 is the mount's read-ahead "
           "and caching at work."),
        Group("ls", "Listing: `ls -l` of a folder", [
            (f"ls_{n}_s", f"{n:,} objects (s)", "s", False, f"ls_{n}_s") for n in sizes
        ], "The first `ls -l` of each folder after the mount, page cache dropped (the root is "
           "listed once, untimed, before). Plain S3: boto3 "
           "ListObjectsV2, paginated, delimiter `/` (Python's overhead included). Ratio: x the "
           "time of the bare listing, lower is better."),
        Group("files", "Small files and a source tree", [
            ("small_create_s", f"create {small:,} (s)", "s", False, "small_create_s"),
            ("small_stat_s", f"stat {small:,} (s)", "s", False, "small_stat_s"),
            ("small_delete_s", f"delete {small:,} (s)", "s", False, "small_delete_s"),
            ("tar_s", f"tar x {tar_files:,} files (s)", "s", False, "tar_s"),
        ], f"create: `echo hi > dir/N` in a row; stat: one `stat` of all {small:,} after dropping "
           f"caches; delete: one `rm` of all. tar x: the first {tar_files:,} files of "
           f"/usr/include in sorted order ({run.params.get('tar_mib', '?')} MiB, "
           f"{run.params.get('tar_dirs', '?')} folders), `tar -x --no-same-owner`, then "
           "`sync -f` of the mount. Plain S3: sequential boto3 PutObject / HeadObject / "
           "DeleteObject of as many keys, and PutObject of each file of the tree. Ratio: x the "
           "time of plain S3, lower is better."),
        Group("docker", "Through Docker", [
            ("docker_run_s", "`docker run --rm -v VOL:/data busybox true` (s)", "s", False, None),
        ], f"Median of {run.params.get('docker_runs', '?')} runs per volume kind, alternating, after "
           "one untimed run of each; ratio: x the time with a local volume. The s3vol volume "
           "mounts at each run (the container is its only user) and unmounts at its end."),
    ]


def base_value(run, group, metric, base_metric, sys_):
    if group.key == "docker":
        return run.median("local", metric) if sys_ != "local" else None
    if base_metric is None or sys_ in ("s3", "bindfs"):
        return None
    return run.median("s3", base_metric)


def group_table(run, group):
    systems = [s for s in run.systems if any((s, c[0]) in run.data or
                                             (s == "s3" and (s, c[4]) in run.data)
                                             for c in group.columns)]
    if not systems:
        return None
    headers = ["system"] + [c[1] for c in group.columns]
    if group.key == "parallel":
        headers.append("memory budget (MiB)")
    rows = []
    for s in systems:
        row = [run.label(s)]
        for metric, _h, unit, _hb, base_metric in group.columns:
            m = base_metric if s == "s3" and base_metric and (s, metric) not in run.data else metric
            row.append(cell(run, s, m, unit, base_value(run, group, metric, base_metric, s)))
        if group.key == "parallel":
            row.append(run.params.get("memory_limit_mib", "?") if s == "s3vol" else "-")
        rows.append(row)
    return table(headers, rows)


def cpu_table(run):
    """Where the CPU time of the cold read and of the write went, per system: the backend and
    the client share the machine's cores, so what one spends the other cannot."""
    cores = run.param_int("cores")
    rows = []
    for what, prefix in (("cold read", "cold"), ("write", "write")):
        for s in run.systems:
            busy = run.median(s, f"{prefix}_cpu_busy_s")
            wall = run.median(s, f"{prefix}_cpu_wall_s")
            if not is_num(busy) or not is_num(wall) or wall <= 0:
                continue
            backend = run.median(s, f"{prefix}_cpu_backend_s")
            daemon = run.median(s, f"{prefix}_cpu_daemon_s") if s != "s3" else None
            rest = busy - (backend if is_num(backend) else 0) - (daemon if is_num(daemon) else 0)
            rows.append([what, run.label(s), num(wall, "s"),
                         num(backend, "s") if is_num(backend) else "-",
                         num(daemon, "s") if is_num(daemon) else "-",
                         num(max(rest, 0.0), "s"),
                         # Ticks are 10 ms: a short run can count a little over its cores.
                         f"{min(busy / wall, cores or busy / wall):.1f}"
                         + (f" of {cores}" if cores else "")])
    if not rows:
        return None
    return table(["workload", "system", "wall time (s)", "RGW + OSD (CPU-s)", "FUSE daemon (CPU-s)",
                  "the rest (CPU-s)", "cores busy"], rows)


def ls_cost_table(run, group):
    sizes = [int(c[0][3:-2]) for c in group.columns]
    rows = []
    for s in run.systems:
        cells = []
        for n in sizes:
            v = run.median(s, f"ls_{n}_s")
            cells.append(num(v * 1e6 / n, "mib") if is_num(v) else "-")
        if any(c != "-" for c in cells):
            rows.append([run.label(s)] + cells)
    return table(["ms per 1,000 objects"] + [f"{n:,}" for n in sizes], rows)


# ---------------------------------------------------------------- targets

def targets(run):
    """Issue #4's targets for s3vol: (group, text, s3vol figure, met or None)."""
    out = []
    m = run.median

    def add(group, text, fig, ok):
        out.append((group, text, fig, ok))

    r = ratio(m("s3vol", "cold_mibs"), m("s3", "cold_mibs"))
    add("sequential", "cold sequential read >= 1.0x plain GET",
        f"{r:.2f}x" if r else "-", None if r is None else r >= 1.0)
    r = ratio(m("s3vol", "warm_mibs"), m("bindfs", "warm_mibs"))
    add("sequential", "warm re-read >= 0.8x bindfs over tmpfs",
        f"{r:.2f}x" if r else "-", None if r is None else r >= 0.8)
    r = ratio(m("s3vol", "write_mibs"), m("s3", "write_mibs"))
    add("sequential", "write (fsync) >= 0.9x plain PUT",
        f"{r:.2f}x" if r else "-", None if r is None else r >= 0.9)

    budget = run.param_int("memory_limit_mib")
    rss = m("s3vol", "rss_peak_mib")
    add("parallel", "peak RSS during the 4 readers <= budget + 64 MiB"
        + (f" ({budget + 64} MiB)" if budget else ""),
        f"{rss:.0f} MiB" if is_num(rss) else "-",
        None if not is_num(rss) or not budget else rss <= budget + 64)

    sizes = sorted(int(k[1][3:-2]) for k in run.data
                   if k[0] == "s3vol" and k[1].startswith("ls_") and k[1][3:-2].isdigit())
    if sizes:
        ref = min(sizes, key=lambda n: abs(math.log(n / 10000)))
        r = ratio(m("s3vol", f"ls_{ref}_s"), m("s3", f"ls_{ref}_s"))
        note = "" if ref == 10000 else f" (measured: {ref:,}, the size nearest to 10,000)"
        add("ls", f"`ls -l` of 10,000 <= 1.5x the bare listing{note}",
            f"{r:.2f}x" if r else "-", None if r is None else r <= 1.5)
        big = sizes[-1]
        if big > ref:
            a, b = m("s3vol", f"ls_{ref}_s"), m("s3vol", f"ls_{big}_s")
            g = ratio(b / big, a / ref) if is_num(a) and is_num(b) else None
            add("ls", f"`ls -l` grows linearly: cost per object at {big:,} <= {LINEAR_SLACK}x "
                f"that at {ref:,}", f"{g:.2f}x" if g else "-", None if g is None else g <= LINEAR_SLACK)

    durable = run.values("s3vol", "small_durable_at_close")
    durable = None if not durable else min(durable) == 1
    for metric, what in (("small_create_s", "create"), ("small_stat_s", "stat"),
                         ("small_delete_s", "delete"), ("tar_s", "tar x")):
        r = ratio(m("s3fs", metric), m("s3vol", metric))
        fig, ok = (f"{r:.2f}x" if r else "-"), (None if r is None else r >= 5)
        if what == "create":
            fig += {None: "", True: ", all in S3 at close", False: ", NOT all in S3 at close"}[durable]
            ok = ok and durable is not False if ok is not None else None
        add("files", f"small files, {what}: >= 5x faster than s3fs-fuse"
            + (" (each file durable at close)" if what == "create" else ""), fig, ok)
    return out


# Rows where rclone's time leaves out the upload (it uploads after close).
DEFERRED = {"write_mibs", "small_create_s", "tar_s"}


def peer_rows(run, gs):
    """s3vol against s3fs-fuse and rclone on every measured row."""
    rows = []
    for g in gs:
        if g.key == "docker":
            continue
        for metric, header, unit, higher, _b in g.columns:
            mine = run.median("s3vol", metric)
            if not is_num(mine):
                continue
            cells, worse = [], []
            for p in PEERS:
                v = run.median(p, metric)
                if v is None or v == "fail":
                    cells.append("-" if v is None else "fail")
                    continue
                cells.append(num(v, unit))
                if (mine < v) if higher else (mine > v):
                    worse.append(p + (" (upload after close not counted)"
                                      if p == "rclone" and metric in DEFERRED else ""))
            if all(c == "-" for c in cells):
                continue
            rows.append([f"{g.title}: {header}", num(mine, unit)] + cells +
                        ["better than both" if not worse else "worse than " + ", ".join(worse)])
    return rows


# ---------------------------------------------------------------- charts

def charts(run, gs, folder):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    made = {}

    def bars(ax, g, columns, ylabel, log=False):
        systems = [s for s in run.systems if any(
            run.values(s, c[0]) or (s == "s3" and c[4] and run.values(s, c[4])) for c in columns)]
        if not systems:
            return False
        width = 0.8 / len(systems)
        for i, s in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for j, c in enumerate(columns):
                metric = c[0]
                if s == "s3" and c[4] and not run.values(s, metric):
                    metric = c[4]
                vals = run.values(s, metric)
                if g.key == "docker" and s not in ("s3vol", "local"):
                    vals = []
                if not vals:
                    continue
                med = statistics.median(vals)
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(med)
                lo.append(med - min(vals))
                hi.append(max(vals) - med)
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=run.label(s),
                       color=COLORS.get(s))
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([c[1] for c in columns], fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        return True

    def legend_below(fig, *axes):
        handles = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=7,
                   frameon=False)
        fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(handles) / 3), 1, 1))

    def save(fig, name, key):
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[key] = os.path.join(os.path.basename(folder), name)

    by_key = {g.key: g for g in gs}
    suffix = " (medians; bars: min to max)"

    g = by_key["sequential"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if bars(ax, g, g.columns, "MiB/s"):
        ax.set_title(g.title + suffix)
        legend_below(fig, ax)
        save(fig, "sequential.png", g.key)
    else:
        plt.close(fig)

    g = by_key["parallel"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    ok1 = bars(a1, g, g.columns[:1], "MiB/s")
    ok2 = bars(a2, g, g.columns[1:], "MiB")
    budget = run.param_int("memory_limit_mib")
    if ok2 and budget:
        a2.axhline(budget, color=COLORS["s3vol"], ls="--", lw=1, label=f"s3vol budget {budget} MiB")
        a2.axhline(budget + 64, color="red", ls=":", lw=1, label="target: budget + 64 MiB")
    if ok1 or ok2:
        a1.set_title("4 readers at once (aggregate)")
        a2.set_title("peak RSS during the 4 readers")
        legend_below(fig, a1, a2)
        save(fig, "parallel.png", g.key)
    else:
        plt.close(fig)

    g = by_key["random"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    ok1 = bars(a1, g, g.columns[:2], "IOPS (plain S3: requests/s)", log=True)
    ok2 = bars(a2, g, g.columns[2:], "MiB/s", log=True)
    if ok1 or ok2:
        a1.set_title("random 4 KiB reads")
        a2.set_title("random 256 KiB reads")
        legend_below(fig, a1, a2)
        save(fig, "random.png", g.key)
    else:
        plt.close(fig)

    g = by_key["ls"]
    sizes = [int(c[0][3:-2]) for c in g.columns]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for s in run.systems:
        pts = [(n, statistics.median(run.values(s, f"ls_{n}_s")))
               for n in sizes if run.values(s, f"ls_{n}_s")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run.label(s),
                    color=COLORS.get(s))
            drawn = True
    if drawn and len(sizes) > 1:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("objects in the folder")
        ax.set_ylabel("seconds (log)")
        ax.set_title("`ls -l` time by folder size (linear growth = slope 1)")
        ax.grid(alpha=0.3, which="both")
        legend_below(fig, ax)
        save(fig, "ls.png", g.key)
    else:
        plt.close(fig)

    g = by_key["files"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if bars(ax, g, g.columns, "seconds (log)", log=True):
        ax.set_title(g.title + suffix + ", lower is better")
        legend_below(fig, ax)
        save(fig, "files.png", g.key)
    else:
        plt.close(fig)

    g = by_key["docker"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if run.values("s3vol", "docker_run_s") or run.values("local", "docker_run_s"):
        bars(ax, g, g.columns, "seconds")
        ax.set_title("docker run with a volume" + suffix, fontsize=9)
        legend_below(fig, ax)
        save(fig, "docker.png", g.key)
    else:
        plt.close(fig)
    return made


# ---------------------------------------------------------------- report

def report(run):
    gs = groups(run)
    try:
        pngs = charts(run, gs, os.path.join(run.folder, "charts"))
        chart_error = None
    except ImportError as e:
        pngs, chart_error = {}, f"no charts: {e} (python3 -m pip install matplotlib)"
    tgs = targets(run)
    p = run.params
    lines = ["# s3vol mount benchmark", ""]
    if "date" in run.machine:
        lines.append(f"- date: {run.machine['date']}")
    for k in ("machine", "versions", "args"):
        if k in run.machine:
            lines.append(f"- {k}: {run.machine[k]}")
    if "elapsed_s" in p:
        lines.append(f"- run time: {int(p['elapsed_s']) // 60} min {int(p['elapsed_s']) % 60} s")
    lines += ["", f"Medians of {p.get('repeats', '?')} repetition(s), each system on a fresh mount "
              "per workload group. In parentheses: the ratio to plain S3 measured in the same run "
              "(throughputs: higher is better; times: lower is better). Plain S3 and the peers "
              "run against the same local Ceph RGW; bindfs over tmpfs is the FUSE ceiling.", ""]
    if chart_error:
        lines += [chart_error, ""]

    lines += ["## Targets of issue #4 for s3vol", ""]
    lines += table(["target", "s3vol", "verdict"], [[t[1], t[2], verdict(t[3])] for t in tgs])
    lines.append("")

    for g in gs:
        t = group_table(run, g)
        if t is None and g.key != "docker":
            continue
        lines += [f"## {g.title}", ""]
        if g.key == "docker" and t is None:
            lines += [f"Not measured: {p.get('docker_note') or 'no data'}.", ""]
            continue
        lines += t + [""]
        if g.key == "ls":
            lines += ls_cost_table(run, g) + [""]
        cpu = cpu_table(run) if g.key == "sequential" else None
        if cpu:
            lines += ["Where the CPU went during the cold read and the write (medians): the "
                      "backend (RGW and its OSD) and the client share the machine's cores, so "
                      "CPU time a FUSE daemon spends is taken from RGW when the cores are busy. "
                      "The rest: the reading or writing program (`cat`, `dd`, `curl`), kernel "
                      "threads (page-cache writeback) and everything else on the machine.", ""]
            lines += cpu + [""]
        if g.note:
            lines += [g.note, ""]
        mine = [x for x in tgs if x[0] == g.key]
        if mine:
            lines += [f"- target: {x[1]}: s3vol {x[2]}, {verdict(x[3])}" for x in mine] + [""]
        if g.key in pngs:
            lines += [f"![{g.title}]({pngs[g.key]})", ""]

    rows = peer_rows(run, gs)
    if rows:
        lines += ["## s3vol against s3fs-fuse and rclone, row by row", ""]
        lines += table(["row", "s3vol"] + PEERS + ["s3vol is"], rows)
        lines.append("")

    notes = []
    waits = [f"{num(run.median('rclone', metric), 's')} s ({what})"
             for metric, what in (("write_uploaded_after_s", "the big file"),
                                  ("small_uploaded_after_s", "the small files"),
                                  ("tar_uploaded_after_s", "the tar tree"))
             if is_num(run.median("rclone", metric))]
    if waits:
        notes.append("rclone (vfs-cache-mode writes) uploads after close, so its write, create "
                     "and tar x times leave the upload out; the objects reached S3 "
                     + ", ".join(waits) + " after the timed step (medians).")
    at_close = [(s, run.values(s, "small_durable_at_close")) for s in run.systems]
    at_close = [(s, v) for s, v in at_close if v]
    if at_close:
        notes.append("Small files in S3 when the create loop ended (durable at close), "
                     "repetitions: " + ", ".join(
                         f"{s} {sum(1 for x in v if x == 1)} of {len(v)}" for s, v in at_close) + ".")
    if p.get("docker_note"):
        notes.append(f"Docker row: {p['docker_note']}.")
    bad = sorted({k[0] for k in run.data if k[1] == "verify" and run.failed(*k)})
    if bad:
        notes.append("WARNING: data read back through a mount differed from the object: "
                     + ", ".join(bad))
    bad = sorted({k[0] for k in run.data if k[1] == "small_deleted" and run.failed(*k)})
    if bad:
        notes.append("WARNING: small files were still in S3 after `rm` and unmount: "
                     + ", ".join(bad))
    fails = sorted(f"{k[0]} {k[1]} ({run.failed(*k)} of {len(run.data[k])})"
                   for k in run.data if run.failed(*k) and k[1] not in ("verify", "small_deleted"))
    if fails:
        notes.append("Failed measurements (logs/ has the peers' logs): " + "; ".join(fails))
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Raw numbers: raw.tsv (one line per measurement; `param` lines are the settings). "
              "Re-make this report: `scripts/bench-report.py <this folder>`.", ""]
    with open(os.path.join(run.folder, "report.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    report(Run(sys.argv[1]))
    print(f"bench-report: wrote {os.path.join(sys.argv[1], 'report.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
