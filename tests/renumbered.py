"""A naive LLM run with the authors' renumbered positions (PyramidDrop / SparseVLM faithful mode), for tests.

Layer by layer, one unpadded sample: before each drop layer the given visual tokens are removed, and every layer
runs on positions 0..S_j - 1 of the sequence it sees (its rotary embeddings recomputed), exactly as the authors'
prefill; a token appended after the prompt gets the next position of each layer's own sequence, as their decode.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def renumbered_logits(model, embeds: torch.Tensor, image: list[int], drops: list[tuple[int, list[int]]]):
    """embeds (1, S, D) of the full sequence (visual tokens at columns `image`); drops: (layer, kept indices into
    the visual tokens alive at that layer). Returns the logits (S', V) of the last layer's sequence."""
    decoder = model.model.language_model
    hidden, alive, plan = embeds, list(image), dict(drops)
    for index, layer in enumerate(decoder.layers):
        if index in plan:
            kept = {alive[i] for i in plan[index]}
            columns = [c for c in range(hidden.shape[1]) if c not in set(alive) or c in kept]
            hidden = hidden[:, columns]
            alive = [columns.index(c) for c in sorted(kept)]
        positions = torch.arange(hidden.shape[1]).unsqueeze(0)  # renumbered: contiguous on what this layer sees
        rotary = decoder.rotary_emb(hidden, positions)
        out = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        hidden = out[0] if isinstance(out, tuple) else out
    return model.lm_head(decoder.norm(hidden))[0]


def assert_generate_matches_renumbered_run(model, processor, pruner, single: dict, budget: int) -> torch.Tensor:
    """Generate 2 tokens for one unpadded prompt with a recording faithful `pruner` (its `seen` drops) and check
    the prefill and first cached decode step logits against `renumbered_logits`. Returns the prefill's last row."""
    from steprune import PrunedVLM

    vlm = PrunedVLM(model, processor, method=pruner, budget=budget)
    out = vlm.generate(**single, max_new_tokens=2, return_dict_in_generate=True, output_logits=True)
    drops = [(d["layer"], d["chosen"][0].tolist()) for d in pruner.seen]
    embeds = vlm.prepare(**single).spliced.model_kwargs()["inputs_embeds"]
    image = (single["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0].tolist()
    prefill = renumbered_logits(model, embeds, image, drops)[-1]
    torch.testing.assert_close(out.logits[0][0], prefill, atol=1e-5, rtol=1e-4)
    step = torch.cat([embeds, model.get_input_embeddings()(out.sequences[:, -2:-1])], dim=1)
    torch.testing.assert_close(out.logits[1][0], renumbered_logits(model, step, image, drops)[-1], atol=1e-5, rtol=1e-4)
    return prefill
