# Fold assignment and MIL training per encoder x model x fold x seed (GPU when allocated, else CPU).


rule folds:
    input:
        samples=config["samples"],  # the whole sheet, not the QC table: QC changes never move a slide
    output:
        "results/folds.csv",
    params:
        # only the keys that split: a bootstrap or claims setting must not rerun the folds and all MIL
        cfg=as_arg({k: config["evaluate"][k] for k in ("n_folds", "val_fraction", "use_official_split")}),
        seed=config["seed"],
        code=code_version("cli:cmd_folds"),
    log:
        "logs/folds/folds.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil folds --samples {input.samples:q} --params {params.cfg} --seed {params.seed} --out {output:q} 2> {log:q}"


rule mil:
    input:
        features=mil_features,  # the scope's index.tsv (all, or fold{k}): one edge, not one per slide
        graphs=GRAPHS_INDEX,  # SRMIL's tile graphs, through their index likewise
        folds="results/folds.csv",
        samples=config["samples"],
    output:
        predictions="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/predictions.csv",
        model="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/model.pt",
        attention="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/attention.npz",
        history="results/mil/{encoder}/{model}/fold{fold}/seed{seed}/history.csv",
    params:
        cfg=lookup(dpath="{model}", within=MIL_RUNS),  # this run's block over mil's top-level keys
        classes=as_arg(config["classes"]),
        cache_mb=config["mil"]["cache_mb"],
        features_dir=features_dir,
        out_dir="results/mil/{encoder}/{model}/fold{fold}/seed{seed}",
        code=code_version("cli:cmd_mil"),
    log:
        "logs/mil/{encoder}/{model}/fold{fold}/seed{seed}.log",
    benchmark:
        "results/benchmarks/mil/{encoder}/{model}/fold{fold}/seed{seed}.tsv"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil mil --features-dir {params.features_dir} --folds {input.folds:q} --samples {input.samples:q} --fold {wildcards.fold} --model {wildcards.model} --params {params.cfg:q} --classes {params.classes} --seed {wildcards.seed} --threads {threads} --graphs-dir results/graphs --cache-mb {params.cache_mb} --out-dir {params.out_dir} 2> {log:q}"
