"""Take a ptgpt model elsewhere: a transformers folder (hf), a llama.cpp / Ollama file (gguf), the eval
suite as lm-evaluation-harness tasks (lm_eval_tasks) and a model card (model_card).

export/ may import training/; training/ never imports export/ nor the libraries used here
(transformers, gguf, llama_cpp, lm_eval), so a training box needs none of them.
"""
