"""The tokens ablation's start from a channel-concatenation transformer (issue 21).

The full model and the no-mask ablation start from weights trained with channel concatenation
(36 input channels: noisy latent 16, mask 4, canvas latent 16). The tokens ablation's transformer
reads 16 channels (the canvas arrives as one more latent frame), so its fair start is the same
weights with the patch embedding cut to the noisy latent's 16 input channels: what it already
knows of the video, nothing of where the canvas entered. Everything else is copied unchanged.

    python experiments/tokens_init.py CHANNEL_WEIGHTS.safetensors OUT.safetensors
"""

import sys

from safetensors.torch import load_file, save_file

Z_DIM = 16  # the noisy latent's channels come first in channel_concat


def main(src: str, dst: str) -> None:
    state = load_file(src)
    w = state["patch_embedding.weight"]  # (inner, in_channels, 1, 2, 2)
    if w.shape[1] != 2 * Z_DIM + 4:
        raise SystemExit(f"{src}: patch embedding has {w.shape[1]} input channels, not {2 * Z_DIM + 4} (a channel-concatenation transformer)")
    state["patch_embedding.weight"] = w[:, :Z_DIM].contiguous()
    save_file(state, dst)
    print(f"{dst}: patch embedding {tuple(w.shape)} -> {tuple(state['patch_embedding.weight'].shape)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
