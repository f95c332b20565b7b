# Hard-negative mining (config `hnm`, slidemil.hnm; seed paper 002). Per run, fold k and round t >= 1:
# hnm_mine trains DSMIL + MIRank on the round-(t-1) features (training slides; validation slides select
# and gate), scores the training slides' tiles and keeps or rejects the new pseudo labels; hnm_finetune
# fine-tunes the round-(t-1) encoder on the mined tiles (GPU, resumable); embed_fold re-embeds the fold
# with it as encoder {run}-r{t}, which the usual mil/evaluate rules benchmark. The round is a wildcard:
# an interrupted loop resumes at the round it reached, and raising `rounds` plans only the new rounds.
from slidemil.hnm import round_encoder


def hnm_arg(wildcards) -> str:
    """The run's params without `rounds`/`enabled`: raising `rounds` leaves finished rounds as they are."""
    return as_arg(HNM[wildcards.run].round_params())


def hnm_previous_encoder(wildcards) -> str:
    t = int(wildcards.round)
    return HNM[wildcards.run].base if t == 1 else round_encoder(wildcards.run, t - 1)


def hnm_round_dir(run: str, fold, t: int) -> str:
    return f"results/hnm/{run}/fold{fold}/round{t}"


def hnm_features_dir(wildcards) -> str:
    return encoder_features_dir(hnm_previous_encoder(wildcards), wildcards.fold)


def hnm_mine_inputs(wildcards) -> dict:
    """The round-(t-1) features of every slide (the CLI reads the fold's training and validation
    slides), the folds, the sheet, and round t-1's gate and pseudo labels (the gate's reference)."""
    inputs = {"features": expand("{d}/{slide}.zarr", d=hnm_features_dir(wildcards), slide=SLIDES),
              "folds": "results/folds.csv", "samples": config["samples"]}
    t = int(wildcards.round)
    if t > 1:
        prev = hnm_round_dir(wildcards.run, wildcards.fold, t - 1)
        inputs["previous"] = [f"{prev}/gate.json", f"{prev}/pseudo_labels.npz"]
    return inputs


def hnm_previous_flag(wildcards) -> str:
    t = int(wildcards.round)
    return f"--previous {shlex.quote(hnm_round_dir(wildcards.run, wildcards.fold, t - 1))}" if t > 1 else ""


def hnm_init_weights(wildcards) -> list[str]:
    """Round t-1's encoder.pt ([] when round 0 is a seeded random init)."""
    t = int(wildcards.round)
    if t > 1:
        return [f"results/encoders/{round_encoder(wildcards.run, t - 1)}/fold{wildcards.fold}/encoder.pt"]
    weights = hnm_base_entry(wildcards.run, wildcards.fold).get("weights")
    return [weights] if weights else []


def hnm_init_flag(wildcards, input) -> str:
    return f"--init {shlex.quote(str(input.init[0]))}" if input.init else ""


def hnm_base_arg(wildcards) -> str:
    return as_arg(hnm_base_entry(wildcards.run, wildcards.fold))


def hnm_annotations() -> dict[str, dict[str, str]]:
    """Mimic outlines (demo slides only) and tumour annotations per slide, for the mining evidence."""
    paths = dict(zip(SAMPLES["slide_id"], SAMPLES["path"]))
    demo = [s for s in SLIDES if paths[s] in _generated]
    tumour = {s: f"results/demo/annotations/{s}.geojson" for s in demo}
    if "annotation" in SAMPLES.columns:
        tumour.update({s: a for s, a in zip(SAMPLES["slide_id"], SAMPLES["annotation"]) if isinstance(a, str)})
    return {"mimic": {s: f"results/demo/annotations/{s}.mimic.geojson" for s in demo}, "tumour": tumour}


def hnm_run_rounds(wildcards) -> list[str]:
    """Every round dir of a run: results/hnm/{run}/fold{k}/round{t}."""
    return [hnm_round_dir(wildcards.run, k, t) for k in range(N_FOLDS) for t in range(1, HNM[wildcards.run].rounds + 1)]


def hnm_mining_inputs(wildcards) -> dict:
    rounds = hnm_run_rounds(wildcards)
    return {"gates": [f"{d}/gate.json" for d in rounds], "labels": [f"{d}/pseudo_labels.npz" for d in rounds],
            "tiles": expand("results/tiles/{slide}.zarr", slide=SLIDES),
            "mimics": list(hnm_annotations()["mimic"].values())}


def hnm_rounds_arg(wildcards) -> str:
    return " ".join(shlex.quote(d) for d in hnm_run_rounds(wildcards))


def hnm_outputs() -> list[str]:
    return expand("results/hnm/{run}/mining.csv", run=HNM)


rule hnm_mine:
    input:
        unpack(hnm_mine_inputs),
    output:
        labels="results/hnm/{run}/fold{fold}/round{round}/pseudo_labels.npz",
        gate="results/hnm/{run}/fold{fold}/round{round}/gate.json",
        model="results/hnm/{run}/fold{fold}/round{round}/mil/model.pt",
        history="results/hnm/{run}/fold{fold}/round{round}/mil/history.csv",
    params:
        cfg=hnm_arg,
        features_dir=hnm_features_dir,
        previous=hnm_previous_flag,
        classes=as_arg(config["classes"]),
        seed=config["seed"],
        device=config["mil"].get("device", "auto"),
        out_dir="results/hnm/{run}/fold{fold}/round{round}",
        code=code_version("cli:cmd_hnm_mine"),
    log:
        "logs/hnm_mine/{run}/fold{fold}/round{round}.log",
    benchmark:
        "results/benchmarks/hnm_mine/{run}/fold{fold}/round{round}.tsv"
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
        round=r"[1-9]\d*",
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-mine --features-dir {params.features_dir:q} --folds {input.folds:q} "
        "--samples {input.samples:q} --classes {params.classes} --fold {wildcards.fold} --round {wildcards.round} "
        "--params {params.cfg} {params.previous} --seed {params.seed} --device {params.device} --threads {threads} "
        "--out-dir {params.out_dir:q} 2> {log:q}"


rule hnm_finetune:
    input:
        labels="results/hnm/{run}/fold{fold}/round{round}/pseudo_labels.npz",
        init=hnm_init_weights,
        tiles=expand("results/tiles/{slide}.zarr", slide=SLIDES),
    output:
        "results/encoders/{run}-r{round}/fold{fold}/encoder.pt",
    params:
        cfg=hnm_arg,
        base=hnm_base_arg,
        init=hnm_init_flag,
        seed=config["seed"],
        device=config["embed"].get("device", "auto"),
        code=code_version("cli:cmd_hnm_finetune"),
    log:
        "logs/hnm_finetune/{run}/fold{fold}/round{round}.log",
    benchmark:
        "results/benchmarks/hnm_finetune/{run}/fold{fold}/round{round}.tsv"
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
        round=r"[1-9]\d*",
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-finetune --tiles {input.tiles:q} --pseudo-labels {input.labels:q} "
        "--params {params.cfg} --base {params.base} {params.init} --seed {params.seed} --device {params.device} "
        "--threads {threads} --out {output:q} 2> {log:q}"


rule hnm_mining:
    input:
        unpack(hnm_mining_inputs),
    output:
        report(
            "results/hnm/{run}/mining.csv",
            caption="../report/hnm_mining.rst",
            category="6. Hard-negative mining",
            labels={"run": "{run}"},
        ),
    params:
        rounds=hnm_rounds_arg,
        annotations=as_arg(hnm_annotations()),
        cfg=hnm_arg,
        code=code_version("cli:cmd_hnm_mining"),
    log:
        "logs/hnm_mining/{run}.log",
    wildcard_constraints:
        run="|".join(HNM) or "NONE",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil hnm-mining --rounds {params.rounds} --tiles {input.tiles:q} "
        "--annotations {params.annotations} --params {params.cfg} --out {output:q} 2> {log:q}"
