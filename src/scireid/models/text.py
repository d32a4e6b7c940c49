"""CLIP's text side driven by learnable prompt tokens (CLIP-ReID's PromptLearner and TextEncoder)."""
from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """CLIP's text transformer on prompt *embeddings*, pooled at the EOT token and projected."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
        """``prompts`` may stop at the EOT token (PromptLearner's do): under the causal mask no later position
        reaches it, so the EOT feature is the same, at a fraction of the full context's cost."""
        n = prompts.shape[1]
        x = prompts + self.positional_embedding[:n].to(prompts.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:n, :n])  # open_clip's blocks are batch-first
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokenized.argmax(-1)]  # EOT has the largest id
        proj = self.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class PromptLearner(nn.Module):
    """``"<prefix> X1..XM <suffix>"`` with M learnable tokens per class, spliced after the prefix words.

    The fixed words are re-embedded from CLIP's (frozen) token embedding on every call, so loading
    other CLIP weights later can never leave stale prefix embeddings behind.
    """

    def __init__(self, num_classes: int, token_embedding: nn.Embedding, prefix: str, suffix: str, n_ctx: int = 4,
                 context_length: int = 77):
        super().__init__()
        import open_clip

        tok = open_clip.get_tokenizer("RN50-quickgelu")  # CLIP's BPE, shipped inside open_clip
        self.n_prefix = len(tok.encode(prefix))
        self.n_ctx = n_ctx
        text = f"{prefix} {' '.join(['X'] * n_ctx)} {suffix}"
        tokenized = tok([text], context_length=context_length)
        # up to the EOT token (the largest id): the positions after it cannot reach it (TextEncoder.forward)
        self.register_buffer("tokenized", tokenized[:, :int(tokenized.argmax(-1)) + 1], persistent=False)
        self.template = text
        self.token_embedding = [token_embedding]  # a list: shared, not registered twice
        dim = token_embedding.weight.shape[1]
        self.ctx = nn.Parameter(torch.empty(num_classes, n_ctx, dim).normal_(std=0.02))

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            emb = self.token_embedding[0](self.tokenized).to(self.ctx.dtype)
        b = labels.shape[0]
        start = 1 + self.n_prefix  # SOS + prefix words
        prompts = torch.cat([emb[:, :start].expand(b, -1, -1), self.ctx[labels],
                             emb[:, start + self.n_ctx:].expand(b, -1, -1)], dim=1)
        return prompts, self.tokenized.expand(b, -1)
