"""Tiny random models of the real HF classes, with real tokenizers and processors, built offline.

Used by the tests (seconds on CPU, no downloads) and as the starting point of the built-in world's
base model. Nothing here downloads anything.

    from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
    model, processor = tiny_llava()
    inputs = processor(images=[img], text=["USER: <image>\\nWhat colour? ASSISTANT:"], return_tensors="pt")
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BatchFeature,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DEFAULT_CORPUS = (
    "USER: ASSISTANT: What colour is the square? red green blue yellow purple orange",
    "Is there a circle in the image? yes no How many objects are there? 0 1 2 3 4 5 6 7 8 9",
    "Is the red square left or right of the green circle? left right above below describe the scene.",
    "user assistant system What shape is the blue object? triangle cross diamond",
)


def train_tokenizer(texts: Iterable[str], special_tokens: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`; `special_tokens[0..3]` are pad, bos, eos, unk."""
    tok = Tokenizer(models.BPE(unk_token=special_tokens[3]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    pad, bos, eos, unk = special_tokens[:4]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk, padding_side="left"
    )


def tiny_llava_config(
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 3,
    text_hidden: int = 32,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
) -> LlavaConfig:
    """A LLaVA-1.5-shaped config (CLIP tower, feature layer -2, CLS dropped, 2-layer GELU projector)."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        max_position_embeddings=1024,
        pad_token_id=pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def tiny_llava(
    seed: int = 0, corpus: Iterable[str] = DEFAULT_CORPUS, **config_kwargs: int
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random tiny `LlavaForConditionalGeneration` (SDPA attention) and its `LlavaProcessor`."""
    tokenizer = train_tokenizer(corpus, ["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    image_size = config_kwargs.get("image_size", 32)
    patch_size = config_kwargs.get("patch_size", 8)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = tiny_llava_config(
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.config._attn_implementation = "sdpa"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def tiny_qwen2_5_vl(
    seed: int = 0, corpus: Iterable[str] = DEFAULT_CORPUS, patch_size: int = 4, text_layers: int = 2
) -> tuple[Qwen2_5_VLForConditionalGeneration, TinyQwenProcessor]:
    """A random tiny `Qwen2_5_VLForConditionalGeneration` (SDPA) and a `TinyQwenProcessor`.

    A 32x32 image with patch 4 and merge 2 gives a 4x4 grid of 16 visual tokens.
    """
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<unk>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|vision_end|>",
    ]
    tokenizer = train_tokenizer(corpus, specials)
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=64 * 64
    )
    ids = tokenizer.convert_tokens_to_ids
    hidden = 32
    config = Qwen2_5_VLConfig(
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": patch_size * 2 * 2,
            "fullatt_block_indexes": [1],
            "in_chans": 3,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": text_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": ids("<|im_start|>"),
            "eos_token_id": ids("<|im_end|>"),
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids("<|im_end|>")
    return model, TinyQwenProcessor(image_processor, tokenizer)


class TinyQwenProcessor:
    """What `Qwen2_5_VLProcessor` does for images, without its video processor (which needs torchvision).

    Expands each `<|image_pad|>` to grid_t*grid_h*grid_w/merge² placeholders and returns the same keys
    as the real processor: input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw.
    """

    def __init__(self, image_processor: Qwen2VLImageProcessorPil, tokenizer: PreTrainedTokenizerFast) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.image_token = "<|image_pad|>"
        self.chat_template = QWEN_CHAT_TEMPLATE

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def __call__(self, images: list, text: list[str], return_tensors: str = "pt", padding: bool = True) -> BatchFeature:
        vision = self.image_processor(images=images, return_tensors="pt")
        merge = self.image_processor.merge_size**2
        counts = (vision["image_grid_thw"].prod(-1) // merge).tolist()
        expanded, i = [], 0
        for prompt in text:
            parts = prompt.split(self.image_token)
            out = parts[0]
            for part in parts[1:]:
                out += self.image_token * counts[i] + part
                i += 1
            expanded.append(out)
        enc = self.tokenizer(expanded, return_tensors="pt", padding=True)
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        enc["mm_token_type_ids"] = (enc["input_ids"] == image_id).int()
        return BatchFeature(data={**enc, **vision})
