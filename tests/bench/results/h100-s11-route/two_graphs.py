"""Two DecodeGraphs on one model, same token and position: which one's logits are right?"""
import sys

import torch

from mixdesk.engine.bench import rel_error, synthetic_mixtral
from mixdesk.engine.fastpath import DecodeGraph

layers = int(sys.argv[1])
for axis in (0, 1):
    for compile_glue in (True, False):
        model = synthetic_mixtral(layers, 4096, axis)
        with torch.inference_mode():
            prompt = 64
            tokens = torch.randint(0, 32000, (1, prompt), device="cuda")
            first = model(tokens, torch.arange(prompt, device="cuda"))[0, -1]
            nxt = first.argmax(-1, keepdim=True)
            pos = torch.tensor([prompt], device="cuda")
            eager = model(nxt.view(1, 1), pos)[0, -1].float().clone()
            g1 = DecodeGraph(torch.device("cuda"), compile_glue=compile_glue)
            l1 = g1.step(model, nxt, prompt).float().clone()
            g2 = DecodeGraph(torch.device("cuda"), compile_glue=compile_glue)
            l2 = g2.step(model, nxt, prompt).float().clone()
            g1.graph.replay()
            l1b = g1.logits.float().clone()
            g2.graph.replay()
            l2b = g2.logits.float().clone()
            eager2 = model(nxt.view(1, 1), pos)[0, -1].float().clone()
        print(f"axis {axis} compiled {compile_glue}: g1 {rel_error(l1, eager):.2e} "
              f"g2 {rel_error(l2, eager):.2e} g1 again {rel_error(l1b, eager):.2e} "
              f"g2 again {rel_error(l2b, eager):.2e} eager again {rel_error(eager2, eager):.2e}",
              flush=True)
        del g1, g2, model
        torch.cuda.empty_cache()
