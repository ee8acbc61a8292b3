#!/usr/bin/env python3
"""Writes docs/experiments.md from docs/results (Python 3 standard library only).

Every number in the report is read from the result files that docs/results/manifest.json lists;
the command, seed, commits, device and date of each experiment come from the manifest, and the
scripts' settings are quoted from the scripts at the manifest's scripts commit (`git show`). The
text of the closing "Discussion" section is docs/results/discussion.md (created with a
placeholder when absent). Deterministic: the same inputs give the same file.

    python3 scripts/experiments_report.py            # writes docs/experiments.md
    python3 scripts/experiments_report.py --check    # exit 1 if docs/experiments.md is stale
"""

import json
import math
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
RESULTS = os.path.join(DOCS, "results")
OUTPUT = os.path.join(DOCS, "experiments.md")
DISCUSSION = os.path.join(RESULTS, "discussion.md")

def curves(exp):
    """The loss-curve PNG of a perplexity experiment (docs/img/FOLDER-loss.png, FOLDER the
    folder of its files under docs/results) and the command that draws it from its logs (run
    from the repository root with a dma binary built from this repository)."""
    folder = os.path.dirname(exp["files"][0])
    png = f"docs/img/{folder}-loss.png"
    logs = " ".join(f"docs/results/{f}" for f in exp["files"] if f.endswith(".jsonl"))
    command = (
        f"dma plot --curves {logs} --out-dir target/{folder}-curves "
        f"&& cp target/{folder}-curves/loss.png {png}"
    )
    return png, command


# The training loss column of the perplexity table: the mean of this many last steps.
TRAIN_TAIL = 20
# Rows of the held-out loss table: the eval steps that are multiples of this.
EVAL_TABLE_EVERY = 100


def git(*args):
    """The output of a git command in the repository, or None when it fails."""
    try:
        out = subprocess.run(
            ["git", "-C", ROOT, *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def script_at(commit, path):
    """The text of `path` at `commit` and where it came from (the working tree if git fails)."""
    text = git("show", f"{commit}:{path}")
    if text is not None:
        return text, f"`{path}` at {commit}"
    with open(os.path.join(ROOT, path)) as f:
        return f.read(), f"`{path}` in the working tree ({commit} not found)"


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip() and not line.startswith("#")]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def fmt(v, digits=4):
    """Numbers for tables: integers as they are, floats with `digits` significant digits."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.{digits}g}"
    return str(v)


def table(header, rows, align=None):
    """A Markdown table; `align` is a string of 'l'/'r' per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def split_command(text):
    """A manifest command and the note in parentheses that may follow it after spaces."""
    m = re.match(r"^(.*?)\s{2,}(\(.*\))\s*$", text, re.S)
    return (m.group(1), m.group(2)) if m else (text, "")


def header(exp):
    """The provenance lines of an experiment, straight from the manifest."""
    out = [f"## {exp['name']}", ""]
    command, note = split_command(exp["command"])
    out.append(f"- Command: `{command}`" + (f" {note}" if note else ""))
    out.append(f"- Seed: {exp['seed']}")
    out.append(f"- Binary commit: {exp['binary']}; scripts commit: {exp['scripts']}")
    out.append(f"- Device: {exp['device']}; date: {exp['date']}")
    files = ", ".join(f"[{f}](results/{f})" for f in exp["files"])
    out.append(f"- Files: {files}")
    out.append("")
    return out


def code(text, lang=""):
    return [f"```{lang}", text.rstrip("\n"), "```", ""]


def perplexity(exp):
    out = header(exp)
    kinds, logs, texts = [], {}, {}
    for f in exp["files"]:
        stem, ext = os.path.splitext(os.path.basename(f))
        path = os.path.join(RESULTS, f)
        if ext == ".jsonl":
            kinds.append(stem)
            logs[stem] = read_jsonl(path)
        elif ext == ".log":
            with open(path) as fh:
                texts[stem] = fh.read().splitlines()

    # What the logs say besides the per-step lines.
    out.append("### Corpus and model")
    out.append("")
    out.append("The lines of each `.log` other than the per-step ones, quoted:")
    out.append("")
    quoted = []
    for kind in kinds:
        for line in texts.get(kind, []):
            if not re.match(r"step \d+:", line):
                quoted.append(f"{kind}.log: {line}")
    out += code("\n".join(quoted), "text")
    if not any(re.search(r"\bcorpus:", q) for q in quoted):
        out.append(
            "The logs hold no `corpus:` line: `scripts/perplexity.sh` prints it to its own "
            "output, which is not kept under docs/results. The corpus, split and model, as the "
            "script at the scripts commit defines them (its settings, the model config it writes "
            "and the training command):"
        )
        out.append("")
    else:
        out.append("The settings, model config and training command of the script:")
        out.append("")
    script, where = script_at(exp["scripts"], "scripts/perplexity.sh")
    lines = script.splitlines()
    settings = [l for l in lines if re.match(r"^[A-Z_]+=\$\{[A-Z_]+:-", l)]
    corpus = [l for l in lines if "find \"$lib\"" in l or "-not -path" in l or "NR % " in l]
    start = next((i for i, l in enumerate(lines) if "config.json\" <<JSON" in l), None)
    config = []
    if start is not None:
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "JSON")
        config = lines[max(start - 1, 0) : end + 1]
    train_start = next((i for i, l in enumerate(lines) if '"$DMA" train' in l), None)
    train = []
    if train_start is not None:
        i = train_start
        while i < len(lines):
            train.append(lines[i])
            if not lines[i].rstrip().endswith("\\"):
                break
            i += 1
    out.append(f"From {where}:")
    out.append("")
    out += code("\n".join(settings + [""] + corpus + [""] + config + [""] + train), "bash")

    # Final numbers per kind.
    out.append("### Final held-out loss")
    out.append("")
    rows = []
    for kind in kinds:
        log = logs[kind]
        evals = [r for r in log if r.get("eval_loss") is not None]
        last = evals[-1] if evals else None
        half = log[len(log) // 2 :]
        tps = statistics.median(r["tokens_per_s"] for r in half)
        tail = log[-TRAIN_TAIL:]
        train = sum(r["loss"] for r in tail) / len(tail)
        params = ""
        for line in texts.get(kind, []):
            m = re.search(r"(\d+) parameters", line)
            if m:
                params = m.group(1)
        rows.append(
            [
                kind,
                params,
                str(log[-1]["step"]),
                f"{last['eval_loss']:.4f} (step {last['step']})" if last else "-",
                f"{math.exp(last['eval_loss']):.2f}" if last else "-",
                f"{train:.4f}",
                f"{tps:,.0f}",
            ]
        )
    out.append(
        table(
            [
                "kind",
                "parameters (log)",
                "steps",
                "final held-out loss",
                "perplexity (exp)",
                f"train loss (mean of last {TRAIN_TAIL} steps)",
                "tokens/s (median, last half)",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "tokens/s is the median of the logged `tokens_per_s` over the last half of the steps "
        f"(steps {logs[kinds[0]][len(logs[kinds[0]]) // 2]['step']} to "
        f"{logs[kinds[0]][-1]['step']}). `dma train` logs the running average since the run's "
        "start, which includes the evaluations and any one-time cost of the first steps (a "
        "machine without the PTX disk cache compiles the kernels there). The perplexity is "
        "exp(held-out loss).",
    )
    out.append("")

    # Held-out loss by step.
    out.append(f"### Held-out loss by step (every {EVAL_TABLE_EVERY} steps)")
    out.append("")
    by_kind = {
        k: {r["step"]: r["eval_loss"] for r in logs[k] if r.get("eval_loss") is not None}
        for k in kinds
    }
    steps = sorted(
        {s for k in kinds for s in by_kind[k] if s % EVAL_TABLE_EVERY == 0}
    )
    rows = [
        [str(s)] + [f"{by_kind[k][s]:.4f}" if s in by_kind[k] else "-" for k in kinds]
        for s in steps
    ]
    out.append(table(["step"] + kinds, rows))
    out.append("")
    every = sorted({s for k in kinds for s in by_kind[k]})
    if len(every) > 1:
        out.append(
            f"The logs hold a held-out loss at {len(every)} steps ({every[0]} to {every[-1]}); "
            "all of them are in the chart."
        )
        out.append("")

    out.append("### Loss curves")
    out.append("")
    png, command = curves(exp)
    out.append(f"![perplexity loss curves]({os.path.relpath(png, 'docs')})")
    out.append("")
    plot_commit = git("log", "-1", "--format=%h", "--", "crates/dma-cli/src/plot")
    out.append("Rendered from the `.jsonl` files, from the repository root, with:")
    out.append("")
    out += code(command, "bash")
    if plot_commit and plot_commit.strip():
        out.append(
            f"(`dma plot` code of commit {plot_commit.strip()}, the last commit that changed "
            "crates/dma-cli/src/plot.)"
        )
        out.append("")
    return out


def needle(exp):
    out = header(exp)
    # The runs' JSON files (logs, if any, are only listed).
    files = [f for f in exp["files"] if f.endswith(".json")]
    runs = [read_json(os.path.join(RESULTS, f)) for f in files]
    kinds = [r["attention"] for r in runs]

    out.append("### Training and evaluation settings")
    out.append("")
    fields = []
    for r in runs:
        for k, v in r.items():
            if not isinstance(v, (list, dict)) and k not in fields and k != "attention":
                fields.append(k)
    rows = [[f"`{k}`"] + [fmt(r.get(k, "-")) for r in runs] for k in fields]
    out.append(table(["field"] + kinds, rows))
    out.append("")
    out.append(
        "All fields of the JSON files except `cells`, `depths` and `eval_lengths`, as written. "
        "`train_loss` and `train_accuracy` are those of `dma needle`'s training loop."
    )
    out.append("")

    for r, f in zip(runs, files):
        kind = r["attention"]
        train_len = r["seq_len"]
        trained_at = r.get("train_lengths", [train_len])
        lengths = r["eval_lengths"]
        depths = r["depths"]
        cells = {(c["depth"], c["length"]): c for c in r["cells"]}
        head = ["depth \\ length"] + [
            f"{n}*" if n > train_len else str(n) for n in lengths
        ]
        out.append(f"### needle: {kind}")
        out.append("")
        out.append(
            f"Exact match (all digits right) by needle depth and context length, from "
            f"[{f}](results/{f}), trained at length{'s' if len(trained_at) > 1 else ''} "
            f"{', '.join(map(str, trained_at))}; * marks lengths longer than every training "
            "length. Each cell: accuracy (exact / examples)."
        )
        out.append("")
        def grid(cell_text):
            """Rows of the depth x length grid, each cell drawn by `cell_text` ('-' if absent)."""
            return [
                [fmt(d)]
                + [cell_text(cells[(d, n)]) if (d, n) in cells else "-" for n in lengths]
                for d in depths
            ]

        out.append(
            table(head, grid(lambda c: f"{c['accuracy']:.3f} ({c['exact']}/{c['examples']})"))
        )
        out.append("")
        out.append("Digit accuracy (the fraction of pass-key digits right), same cells:")
        out.append("")
        out.append(table(head, grid(lambda c: f"{c['digit_accuracy']:.3f}")))
        out.append("")
        for img in exp.get("images", []):
            if os.path.basename(img) == f"needle-{kind}.png":
                rel = os.path.normpath(os.path.join("results", img))
                out.append(f"![needle heat map, {kind}]({rel})")
                out.append("")
    return out


def grid_size(exp):
    """The number of runs scripts/mqar-grid.sh makes with the command's settings, or None."""
    script, where = script_at(exp["scripts"], "scripts/mqar-grid.sh")
    values = dict(re.findall(r"^([A-Z_]+)=\$\{[A-Z_]+:-([^}]*)\}", script, re.M))
    settings = exp["command"].split("scripts/")[0]
    for name, value in re.findall(r'(?:^|\s)([A-Z_]+)=("[^"]*"|\S+)', settings):
        values[name] = value.strip('"')
    rule = re.search(r"\[ \$\(\((\d+) \* kv\)\) -le \"\$seq\" \]", script)
    try:
        seqs = [int(v) for v in values["SEQS"].split()]
        kvs = [int(v) for v in values["KVS"].split()]
        dims = values["DMODELS"].split()
        kinds = values["KINDS"].split()
    except (KeyError, ValueError):
        return None, where
    factor = int(rule.group(1)) if rule else 0
    pairs = [(s, kv) for s in seqs for kv in kvs if factor * kv <= s]
    desc = (
        f"SEQS={' '.join(map(str, seqs))}, KVS={' '.join(map(str, kvs))}, "
        f"DMODELS={' '.join(dims)}, KINDS={' '.join(kinds)}"
        + (f", only {factor} x kv <= seq_len" if rule else "")
    )
    return (len(pairs) * len(dims) * len(kinds), desc), where


def mqar(exp):
    out = header(exp)
    rows = []
    for f in exp["files"]:
        rows += read_jsonl(os.path.join(RESULTS, f))
    rows.sort(key=lambda r: (r["seq_len"], r["kv_pairs"], r["d_model"], r["attention"]))
    cols = [
        "attention",
        "seq_len",
        "kv_pairs",
        "d_model",
        "heads",
        "window",
        "steps",
        "batch",
        "accuracy",
        "train_loss",
        "train_accuracy",
        "train_seconds",
    ]
    body = []
    for r in rows:
        body.append(
            [
                fmt(r.get(c, "-"))
                if c not in ("accuracy", "train_accuracy", "train_loss")
                else (f"{r[c]:.6f}" if c in r else "-")
                for c in cols
            ]
        )
    out.append(table(cols, body))
    out.append("")
    size, where = grid_size(exp)
    if size:
        total, desc = size
        out.append(
            f"{len(rows)} of the grid's {total} runs are present ({desc}; from {where} with the "
            "command's settings). The manifest's command says why the others are missing."
        )
    else:
        out.append(f"{len(rows)} runs are present (the grid's size could not be read from {where}).")
    out.append("")
    shared = {}
    for k in ("vocab", "layers", "lr", "weight_decay", "clip", "power_a", "train_examples",
              "test_examples", "seed"):
        vals = {json.dumps(r.get(k)) for r in rows}
        if len(vals) == 1 and rows and k in rows[0]:
            shared[k] = rows[0][k]
    if shared:
        out.append(
            "Shared by every run: " + ", ".join(f"{k} {fmt(v)}" for k, v in shared.items()) + "."
        )
        out.append("")
    return out


def heatmap(exp):
    """A trained model's kept keys and weights: where its training ended, and the figures."""
    out = header(exp)
    steps = []
    for f in exp["files"]:
        steps += read_jsonl(os.path.join(RESULTS, f))
    evals = [r for r in steps if r.get("eval_loss") is not None]
    if steps:
        text = f"Trained {steps[-1]['step']} steps; training loss {fmt(steps[-1]['loss'])}"
        if evals:
            text += f", held-out loss {fmt(evals[-1]['eval_loss'])} (step {evals[-1]['step']})"
        out.append(
            text + ". In each figure the top row is every query head's kept keys (blue: kept; "
            "a row per query, a column per key), the bottom row its attention weights."
        )
        out.append("")
    for img in exp.get("images", []):
        rel = os.path.normpath(os.path.join("results", img))
        out.append(f"![{os.path.splitext(os.path.basename(img))[0]}]({rel})")
        out.append("")
    return out


SECTIONS = {"perplexity": perplexity, "needle": needle, "mqar": mqar, "heatmap": heatmap}

# The grid of issue 4 and the budget every cell shares (scripts/mqar-grid.sh with TOKENS=65536
# STEPS=2500 LR=1e-3, Doge's A = 0): the table below has one row per cell of it.
GRID_SEQS, GRID_KVS, GRID_DMODELS, GRID_KINDS = (512, 1024, 2048, 4096), (64, 128, 256), (64, 128), (
    "dma",
    "swa",
    "mha",
)
GRID_TOKENS, GRID_STEPS, GRID_LR = 65536, 2500, 1e-3


def mqar_grid(manifest):
    """One table of the whole grid at the common budget, from every mqar experiment's files."""
    runs = {}
    for exp in manifest["experiments"]:
        if exp["name"] != "mqar":
            continue
        for f in exp["files"]:
            for r in read_jsonl(os.path.join(RESULTS, f)):
                common = (
                    r["steps"] == GRID_STEPS
                    and r["batch"] * r["seq_len"] == GRID_TOKENS
                    and abs(r["lr"] - GRID_LR) < 1e-12
                    and not r.get("a_std")
                )
                if common:
                    key = (r["seq_len"], r["kv_pairs"], r["d_model"], r["attention"])
                    runs.setdefault(key, []).append(r)
    body, cells, done = [], 0, 0
    for seq in GRID_SEQS:
        for kv in GRID_KVS:
            if 4 * kv > seq:
                continue
            for d in GRID_DMODELS:
                row = [str(seq), str(kv), str(d)]
                for kind in GRID_KINDS:
                    cells += 1
                    rs = runs.get((seq, kv, d, kind), [])
                    done += bool(rs)
                    row.append(" / ".join(f"{r['accuracy']:.3f}" for r in rs) or "-")
                body.append(row)
    out = [
        "## MQAR grid at one budget",
        "",
        f"Test accuracy of every cell of the grid (w = 512, 2 layers, vocab 8192) trained on "
        f"{GRID_TOKENS} tokens a step (batch {GRID_TOKENS} / N) for {GRID_STEPS} steps at lr "
        f"{GRID_LR:g}, `A` = 0 (Doge's init), seed 0, collected from the mqar sections above; "
        f"`-`: not run yet; `a / b`: the same run twice (same seed; the GPU's atomic adds make "
        f"runs differ). {done} of the {cells} runs exist. Longer runs (4500 steps) and runs "
        "from a random `A` are in their sections and in the discussion, not here.",
        "",
        table(["N", "kv pairs", "d_model", *GRID_KINDS], body),
        "",
    ]
    return out


def report():
    manifest = read_json(os.path.join(RESULTS, "manifest.json"))
    out = [
        "Generated by scripts/experiments_report.py from docs/results; do not edit by hand.",
        "",
        "# Experiments",
        "",
        manifest.get("note", ""),
        "",
    ]
    for exp in manifest["experiments"]:
        build = SECTIONS.get(exp["name"])
        if build is None:
            out += header(exp)
            out.append("(no table for this experiment in scripts/experiments_report.py)")
            out.append("")
        else:
            out += build(exp)
    out += mqar_grid(manifest)
    if not os.path.exists(DISCUSSION):
        with open(DISCUSSION, "w") as f:
            f.write("(to be written)\n")
    with open(DISCUSSION) as f:
        discussion = f.read().strip()
    out += ["## Discussion", "", discussion, ""]
    return "\n".join(out)


def main():
    text = report()
    if "--check" in sys.argv[1:]:
        try:
            with open(OUTPUT) as f:
                current = f.read()
        except OSError:
            current = None
        if current != text:
            print(f"{OUTPUT} is stale: run scripts/experiments_report.py", file=sys.stderr)
            return 1
        return 0
    with open(OUTPUT, "w") as f:
        f.write(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
