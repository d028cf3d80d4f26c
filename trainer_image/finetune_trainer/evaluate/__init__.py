"""The evaluation toolkit: benchmarks (reading), generate (batched generation, likelihood), metrics
(EM, F1, BLEU, ROUGE-L, perplexity, faithfulness) and reports (JSON, Markdown, HTML).

The `finetune-trainer eval` recipe that drives them is recipes/evaluate.py.
"""
