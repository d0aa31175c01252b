"""The toy layer's benchmarks, each a command:

    python -m pacgen.mini.bench ...                   # methods: a kit concept's identity away from its photos' framing
    python -m pacgen.mini.bench.regional_speed ...    # regional sampling's cost against plain GLIGEN generation
    python -m pacgen.mini.bench.train_throughput ...  # concept training against diffusers' DreamBooth LoRA script

The method benchmark is `__main__` with its parts: `methods` (what is compared, and where), `scoring` (generating
and scoring one image), `report` (the markdown report and the image grid). docs/benchmarks.md has the speed
benchmarks' results, docs/mini_bench.md and docs/mini_study.md the method benchmark's.
"""
