"""The HoloV authors' Qwen2.5-VL score, computed naively (per image, per head) for the CLS-less tests.

Independent of `QwenVisionAccess`: the last block's input comes from the tower's own `output_hidden_states`, the
rotary embeddings and the window order from transformers' own vision utilities, and the attention is checked to
reproduce the block's output before its received attention is used.
"""

from __future__ import annotations

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index


@torch.no_grad()
def authors_qwen_score(model, inputs) -> torch.Tensor:
    """(B, N): per image, the last block's softmax attention averaged over heads and query patches (attention
    each patch receives), each 2x2 merge group's four patches averaged, in the merged tokens' spatial order."""
    vis = model.model.visual
    grid = inputs["image_grid_thw"]
    out = vis(inputs["pixel_values"], grid_thw=grid, output_hidden_states=True, return_dict=True)
    h_in, h_out = out.hidden_states[-2], out.hidden_states[-1]  # (S, D): last block's input / output, window order
    s, d = h_in.shape
    block = vis.blocks[-1]
    assert len(vis.blocks) - 1 in vis.fullatt_block_indexes, "the reference assumes a full-attention last block"
    m, heads = vis.spatial_merge_size, block.attn.num_heads
    window_index, _ = get_vision_window_index(grid, m, vis.window_size, vis.patch_size)
    cos, sin = vis.rotary_pos_emb(h_in, get_vision_position_ids(grid, m))
    cos, sin = (vis.permute_input_for_window_attn(t, window_index, seq_len=s) for t in (cos, sin))
    q, k, v = block.attn.qkv(block.norm1(h_in)).view(s, 3, heads, -1).unbind(1)  # (S, H, dh) each
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    per_image = s // grid.shape[0]
    received, outputs = torch.zeros(s), torch.zeros(s, d)
    for start in range(0, s, per_image):  # one image = one segment of the full-attention block
        rows = slice(start, start + per_image)
        head_outputs = []
        for h in range(heads):
            attn = torch.softmax(q[rows, h] @ k[rows, h].T / (q.shape[-1] ** 0.5), dim=-1)  # (P, P)
            received[rows] += attn.mean(dim=0) / heads  # mean over queries, then heads
            head_outputs.append(attn @ v[rows, h])
        outputs[rows] = torch.cat(head_outputs, dim=-1)
    mid = h_in + block.attn.proj(outputs)
    torch.testing.assert_close(mid + block.mlp(block.norm2(mid)), h_out, atol=1e-4, rtol=1e-4)  # it IS that block
    pooled = received.view(-1, m * m).mean(dim=1)  # (B * N,) merged tokens in window order
    spatial = torch.zeros_like(pooled)
    for position, token in enumerate(window_index.tolist()):
        spatial[token] = pooled[position]
    return spatial.view(grid.shape[0], -1)
