# The shape of slidemil's DAG with nothing of slidemil (`benchmarks/dag.py --floor`): per slide a tile
# job, an embed job and a graph job; 48 MIL-like jobs (2 encoders x 2 models x 4 folds x 3 seeds) that
# each list every slide's features and graph; no logs, params, resources or conda. What Snakemake
# itself costs to plan that many jobs and inputs. Config: nslides, graphs (MIL jobs list the graphs
# too), manifest (one job gathers features and graphs and the MIL jobs read only it).
N = int(config.get("nslides", 1000))
SLIDES = [f"s{i:05d}" for i in range(N)]
FEATURES = [f"features/{s}.zarr" for s in SLIDES]
GRAPHS = [f"graphs/{s}.npz" for s in SLIDES]
GATHERED = FEATURES + (GRAPHS if config.get("graphs", True) else [])
MANIFEST = bool(config.get("manifest", False))


rule all:
    input:
        expand("mil/{k}.csv", k=range(48)),
        GRAPHS,


rule tile:
    output:
        "tiles/{slide}.zarr",
    shell:
        "touch {output}"


rule embed:
    input:
        "tiles/{slide}.zarr",
    output:
        "features/{slide}.zarr",
    shell:
        "touch {output}"


rule graph:
    input:
        "tiles/{slide}.zarr",
    output:
        "graphs/{slide}.npz",
    shell:
        "touch {output}"


rule manifest:
    input:
        GATHERED,
    output:
        "features/manifest.tsv",
    shell:
        "touch {output}"


rule mil:
    input:
        ["features/manifest.tsv"] if MANIFEST else GATHERED,
    output:
        "mil/{k}.csv",
    shell:
        "touch {output}"
