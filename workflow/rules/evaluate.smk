# The benchmark tables (per encoder x model, and per run), paired comparisons, the claims table
# and the ROC plot, from every MIL run's predictions (slidemil.evaluate.benchmark documents the estimators).


rule evaluate:
    input:
        all_predictions(),
    output:
        table=report(
            "results/benchmark.csv",
            caption="../report/benchmark.rst",
            category="1. Benchmark",
            labels={"result": "benchmark per encoder x model"},
        ),
        runs=report(
            "results/benchmark_runs.csv",
            caption="../report/benchmark_runs.rst",
            category="1. Benchmark",
            labels={"result": "benchmark per run"},
        ),
        plot=report(
            "results/roc.png",
            caption="../report/roc.rst",
            category="1. Benchmark",
            labels={"result": "ROC curves"},
        ),
        comparisons=report(
            "results/comparisons.csv",
            caption="../report/comparisons.rst",
            category="1. Benchmark",
            labels={"result": "paired comparisons"},
        ),
        claims=report(
            "results/claims.csv",
            caption="../report/claims.rst",
            category="2. Claims",
            labels={"result": "claims"},
        ),
    params:
        cfg=as_arg(config["evaluate"]),
        encoders=as_arg(config["encoders"] + CATALOGUE.hnm_metadata()),  # + hard-negative-mining rounds (claims metadata)
        models=as_arg(config["mil"]["models"]),
        pretrain=as_arg(config["pretrain"]),
        classes=as_arg(config["classes"]),
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["seed"],
        code=code_version("cli:cmd_evaluate"),
    log:
        "logs/evaluate/benchmark.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil evaluate --predictions {input:q} --classes {params.classes} --params {params.cfg} --encoders {params.encoders} --models {params.models} --pretrain {params.pretrain} --bootstrap {params.bootstrap} --seed {params.seed} --out {output.table:q} --runs-out {output.runs:q} --plot {output.plot:q} --comparisons {output.comparisons:q} --claims {output.claims:q} 2> {log:q}"



rule heatmaps:
    input:
        predictions=heatmap_predictions,
        features=heatmap_features,
        samples=config["samples"],
        annotations=ANNOTATIONS,
    output:
        metrics=report(
            "results/heatmaps/{encoder}/{model}/instance_metrics.csv",
            caption="../report/instance_metrics.rst",
            category="5. Instance level",
            subcategory="{encoder} / {model}",
            labels={"result": "instance metrics per slide"},
        ),
        froc=report(
            "results/heatmaps/{encoder}/{model}/froc.csv",
            caption="../report/froc.rst",
            category="5. Instance level",
            subcategory="{encoder} / {model}",
            labels={"result": "lesion FROC"},
        ),
        froc_curve="results/heatmaps/{encoder}/{model}/froc_curve.csv",
        png=report(
            directory("results/heatmaps/{encoder}/{model}/png"),
            patterns=["{slide}.png"],
            caption="../report/heatmap.rst",
            category="4. Attention heatmaps",
            subcategory="{encoder} / {model}",
            labels={"slide": "{slide}"},
        ),
        geojson=directory("results/heatmaps/{encoder}/{model}/geojson"),
        curves=report(
            "results/heatmaps/{encoder}/{model}/training_curves.png",
            caption="../report/training_curves.rst",
            category="3. Training curves",
            subcategory="{encoder}",
            labels={"model": "{model}"},
        ),
    params:
        folds=heatmap_fold_dirs,
        features_dir=heatmap_features_dir,
        out_dir="results/heatmaps/{encoder}/{model}",
        title="{encoder} / {model}",
        png_per_fold=config["evaluate"]["png_per_fold"],
        froc=as_arg(config["evaluate"]["froc"]),
        code=code_version("cli:cmd_heatmaps"),
    log:
        "logs/heatmaps/{encoder}/{model}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil heatmaps --folds {params.folds} --features-dir '{params.features_dir}' --samples {input.samples:q} --annotations {input.annotations:q} --out-dir {params.out_dir} --title '{params.title}' --png-per-fold {params.png_per_fold} --froc {params.froc} 2> {log:q}"


# Linear probe of each encoder's tile features against the tumour annotations (slidemil.evaluate.probe).
rule probe:
    input:
        features=heatmap_features,  # the encoder's feature index(es), per fold for fold-trained ones
        folds="results/folds.csv",
        samples=config["samples"],
        annotations=ANNOTATIONS,
    output:
        "results/probe/{encoder}.csv",
    params:
        features_dir=heatmap_features_dir,
        classes=as_arg(config["classes"]),
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["seed"],
        code=code_version("cli:cmd_probe"),
    log:
        "logs/probe/{encoder}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil probe --encoder {wildcards.encoder} --features-dir {params.features_dir:q} --folds {input.folds:q} --samples {input.samples:q} --classes {params.classes} --annotations {input.annotations:q} --bootstrap {params.bootstrap} --seed {params.seed} --out {output:q} 2> {log:q}"


rule probe_table:
    input:
        expand("results/probe/{encoder}.csv", encoder=ALL_ENCODERS),
    output:
        report(
            "results/probe.csv",
            caption="../report/probe.rst",
            category="1. Benchmark",
            labels={"result": "linear probe per encoder"},
        ),
    params:
        code=code_version("cli:cmd_probe_table"),
    log:
        "logs/probe/table.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil probe-table --rows {input:q} --out {output:q} 2> {log:q}"
