"""`tiny-random`: a MAGREF built from configs in code, with seeded random weights.

Same architecture family as the real model (Wan I2V transformer with 36 input channels and image
cross-attention, Wan causal 3D VAE with 16 latent channels, UMT5 encoder, CLIP vision tower),
small enough that a whole video runs on a 2-core CPU in seconds, and nothing is downloaded: the
tokenizer is a byte-level tokenizer built here with the `tokenizers` library.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .conditioning import clip_image_processor
from .schedulers import make_scheduler

TINY_SEED = 0
TEXT_DIM = 32
CLIP_DIM = 32
CLIP_IMAGE_SIZE = 28


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (pad=0, eos=1, unk=2, then the 256 bytes) appending </s> like T5."""
    byte_vocab = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in sorted(byte_vocab):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_components(seed: int = TINY_SEED, solver: str = "unipc", shift: float = 3.0) -> dict:
    tokenizer = byte_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer),
                d_model=TEXT_DIM,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
            )
        )
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=CLIP_DIM,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=CLIP_IMAGE_SIZE,
                patch_size=14,
                projection_dim=16,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
            )
        )
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=36,
            out_channels=16,
            text_dim=TEXT_DIM,
            freq_dim=32,
            ffn_dim=64,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
            image_dim=CLIP_DIM,
            added_kv_proj_dim=32,
            rope_max_seq_len=1024,
        )
    image_processor = clip_image_processor(CLIP_IMAGE_SIZE)
    for m in (text_encoder, image_encoder, vae, transformer):
        m.eval()
    return dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=make_scheduler(solver, shift),
        image_encoder=image_encoder,
        transformer=transformer,
        image_processor=image_processor,
    )


def tiny_random_pipeline(seed: int = TINY_SEED, solver: str = "unipc", shift: float = 3.0):
    from .pipeline import MagrefPipeline

    return MagrefPipeline(**tiny_components(seed, solver, shift))
