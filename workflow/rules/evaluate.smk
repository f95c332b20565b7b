# The benchmark table (one row per encoder x model x fold + summaries) and its ROC plot.


rule evaluate:
    input:
        all_predictions(),
    output:
        table="results/benchmark.csv",
        plot="results/roc.png",
    params:
        classes=as_arg(config["classes"]),
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["seed"],
        code=code_version("evaluate.py", "metrics.py"),
    log:
        "logs/evaluate/benchmark.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil evaluate --predictions {input} --classes {params.classes} --bootstrap {params.bootstrap} --seed {params.seed} --out {output.table} --plot {output.plot} 2> {log}"



rule heatmaps:
    input:
        predictions=heatmap_predictions,
        features=slide_features,
        samples=config["samples"],
    output:
        "results/heatmaps/{encoder}/{model}/instance_metrics.csv",
    params:
        folds=heatmap_fold_dirs,
        annotations=annotations_arg(),
        features_dir="results/features/{encoder}",
        out_dir="results/heatmaps/{encoder}/{model}",
        code=code_version("heatmaps.py", "metrics.py"),
    log:
        "logs/heatmaps/{encoder}/{model}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "python -m slidemil heatmaps --folds {params.folds} --features-dir {params.features_dir} --samples {input.samples} --annotations {params.annotations} --out-dir {params.out_dir} 2> {log}"
