"""Built-in vilgkit plugin: image tokenizers (VQVAE, VQGAN on taming-transformers' modules, dVAE,
published taming VQGAN checkpoints). Importing the modules registers them in ``IMAGE_TOKENIZERS``."""

from vilgkit_vq.dvae import DVAETokenizer
from vilgkit_vq.taming_ckpt import TamingVQGAN, read_lightning_checkpoint
from vilgkit_vq.vqgan import VQGANTokenizer
from vilgkit_vq.vqvae import VQVAETokenizer

__all__ = ["DVAETokenizer", "TamingVQGAN", "VQGANTokenizer", "VQVAETokenizer", "read_lightning_checkpoint"]
