"""SAM's mask decoder for many point prompts on one image, computed at matmul speed.

Same function as ``segment_anything``'s ``PromptEncoder`` + ``MaskDecoder`` (with no mask
input), same weights, read from the ``Sam`` module it is given; only the order of work
changes:

- The work that does not depend on the prompt is done once per image (``prepare``): the
  image embedding plus the no-mask dense embedding, its positional encoding, and the first
  two-way layer's projections of them (token->image keys and values, image->token queries;
  in layer 0 the keys are still the image embedding, after it they are per prompt).
- No per-prompt copy of the image embedding: layer 0 broadcasts it, and its token->image
  attention is one fused attention of all prompts' tokens over the shared keys.
- Later token->image attentions are folded into the few prompt tokens:
  ``(W_k x) . q == x . (W_k^T q)``, and softmax rows sum to one, so the value projection
  is applied after the weighted sum: two ``tokens x 4096 x 256`` matmuls per prompt instead
  of projecting 4096 image tokens twice.
- Image->token attentions (4096 queries, 7 keys) fold the query projection into the token
  keys after layer 0, and the output projection into the token values, so the output and
  its residual are one batched matmul.
- The kernel = stride = 2 transposed convolutions of ``output_upscaling`` are per-pixel
  matmuls, done channel-last with LayerNorm and GELU in between, and only the mask tokens
  asked for are applied to the upscaled embedding.

This module imports torch at import time; only ``masks.fast`` imports it, lazily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from segment_anything.modeling import Sam
    from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

# Prompts per pass: bounds the per-prompt activations (4-8 MB each). Measured on 2 cores:
# smaller passes save page faults on one thread but pay thread start-up on two.
_PROMPT_CHUNK = 32


@dataclass
class ImageContext:
    """Prompt-independent decoder state for one image (4096 = 64 x 64 image tokens)."""

    key_pe: Tensor  # 4096 x C: dense positional encoding
    t2i_k: Tensor  # heads x 4096 x d: layer 0 token->image keys
    t2i_v: Tensor  # heads x 4096 x d: layer 0 token->image values
    i2t_q_t: Tensor  # heads x d x 4096: layer 0 image->token queries, transposed
    # 4096 x C: image embedding + no-mask embedding + layer 0's image->token output bias,
    # the residual of that attention
    keys_out_bias: Tensor
    grid: tuple[int, int]  # (h, w) of the image embedding


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """... x N x (heads*d) -> ... x heads x N x d."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n, num_heads, c // num_heads).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """... x heads x N x d -> ... x N x (heads*d)."""
    *lead, h, n, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, n, h * d)


def _token_attention(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attn(q, k, v)`` for inputs with few tokens (B x T x C), with fused attention."""
    heads = attn.num_heads
    out = F.scaled_dot_product_attention(
        _heads(attn.q_proj(q), heads), _heads(attn.k_proj(k), heads), _heads(attn.v_proj(v), heads)
    )
    return attn.out_proj(_merge_heads(out))


def _folded_token_to_image(attn: Attention, q: Tensor, keys_pe: Tensor, keys: Tensor) -> Tensor:
    """``attn(q, keys_pe, keys)`` for B x T queries over B x N image tokens, folded.

    Scores ``q_h . (W_k,h x + b_k,h)``: the bias term is the same for every image token, so
    softmax drops it, and ``W_k,h^T q_h`` turns the key projection into a T-row matrix.
    Values: ``sum_n p_n (W_v x_n + b_v) == W_v (sum_n p_n x_n) + b_v``.
    """
    heads, d = attn.num_heads, attn.internal_dim // attn.num_heads
    qh = _heads(attn.q_proj(q), heads)  # B x heads x T x d
    w_k = attn.k_proj.weight.view(heads, d, -1)  # heads x d x C
    q_img = torch.einsum("bhtd,hdc->bhtc", qh, w_k).flatten(1, 2)  # B x (heads*T) x C
    pooled = F.scaled_dot_product_attention(
        q_img[:, None], keys_pe[:, None], keys[:, None], scale=1.0 / math.sqrt(d)
    )[:, 0]  # B x (heads*T) x C
    pooled = pooled.view(q.shape[0], heads, q.shape[1], -1)
    w_v = attn.v_proj.weight.view(heads, d, -1)
    values = torch.einsum("bhtc,hdc->bhtd", pooled, w_v) + attn.v_proj.bias.view(heads, 1, d)
    return attn.out_proj(_merge_heads(values))


def _image_to_token_scores(
    attn: Attention, tokens_k: Tensor, queries_t: Tensor | None, keys_pe: Tensor | None
) -> Tensor:
    """Scaled scores of image queries against B x T token keys: B x heads x T x N.

    Either ``queries_t`` (heads x d x N: projected image queries shared by all prompts) or
    ``keys_pe`` (B x N x C, per prompt) is given. For the latter the query projection is
    folded into the T token keys: ``(W_q x + b_q) . k == x . (W_q^T k) + b_q . k``.
    """
    heads, d = attn.num_heads, attn.internal_dim // attn.num_heads
    kh = _heads(attn.k_proj(tokens_k), heads) * (1.0 / math.sqrt(d))  # B x heads x T x d
    b, _, t, _ = kh.shape
    if queries_t is not None:
        return torch.matmul(kh, queries_t)
    assert keys_pe is not None
    w_q = attn.q_proj.weight.view(heads, d, -1)
    k_img = torch.einsum("bhtd,hdc->bhtc", kh, w_q).flatten(1, 2)  # B x (heads*T) x C
    bias = torch.einsum("bhtd,hd->bht", kh, attn.q_proj.bias.view(heads, d)).flatten(1)
    scores = torch.baddbmm(bias[:, :, None], k_img, keys_pe.transpose(1, 2))
    return scores.view(b, heads, t, -1)


def _image_to_token(attn: Attention, scores: Tensor, tokens_v: Tensor, residual: Tensor) -> Tensor:
    """``residual + attn(image queries, token keys, tokens_v)`` given the scores.

    ``scores``: B x heads x T x N from ``_image_to_token_scores``; the softmax over the T
    tokens runs along N, which is contiguous. Values go through the output projection first
    (T rows instead of N), so the output is one B x N x (heads*T) by B x (heads*T) x C
    product added to ``residual`` (N x C or B x N x C, output bias included).
    """
    heads, d = attn.num_heads, attn.internal_dim // attn.num_heads
    b, _, t, n = scores.shape
    probs = torch.softmax(scores, dim=2).view(b, heads * t, n)
    vh = _heads(attn.v_proj(tokens_v), heads)  # B x heads x T x d
    w_o = attn.out_proj.weight.view(-1, heads, d)  # C x heads x d
    v_out = torch.einsum("bhtd,chd->bhtc", vh, w_o).flatten(1, 2)  # B x (heads*T) x C
    return torch.baddbmm(residual, probs.transpose(1, 2), v_out)


class FastMaskDecoder:
    """Point prompts -> low-res mask logits and IoU predictions, for one image at a time.

    Reads the weights of ``sam.prompt_encoder`` and ``sam.mask_decoder`` (no copy); call
    under ``torch.inference_mode()``. ``prepare`` once per image embedding, then
    ``predict`` for any number of prompt batches.
    """

    def __init__(self, sam: Sam) -> None:
        self.prompt_encoder = sam.prompt_encoder
        self.decoder = sam.mask_decoder
        self.transformer = self.decoder.transformer
        if len(self.transformer.layers) < 1:
            raise ValueError("the mask decoder's transformer has no layers")

    def prepare(self, image_embeddings: Tensor) -> ImageContext:
        """Image embedding 1 x C x h x w (float, model device) -> per-image decoder state."""
        pe_enc = self.prompt_encoder
        _, c, h, w = image_embeddings.shape
        dense = pe_enc.no_mask_embed.weight.reshape(1, c)
        keys = image_embeddings[0].flatten(1).T + dense  # N x C
        key_pe = pe_enc.get_dense_pe()[0].flatten(1).T.contiguous()
        keys_with_pe = keys + key_pe
        layer0 = self.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        return ImageContext(
            key_pe=key_pe,
            t2i_k=_heads(t2i.k_proj(keys_with_pe), t2i.num_heads).contiguous(),
            t2i_v=_heads(t2i.v_proj(keys), t2i.num_heads).contiguous(),
            i2t_q_t=_heads(i2t.q_proj(keys_with_pe), i2t.num_heads).transpose(1, 2).contiguous(),
            keys_out_bias=keys + i2t.out_proj.bias,
            grid=(h, w),
        )

    def predict(
        self, ctx: ImageContext, point_coords: Tensor, point_labels: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """Prompts -> (logits B x M x 4h x 4w, IoU predictions B x M); M = 3 or 1.

        ``point_coords`` B x P x 2 (x, y) in the model's input frame (after
        ResizeLongestSide), ``point_labels`` B x P (1 foreground, 0 background), exactly as
        ``SamPredictor.predict_torch`` takes them.
        """
        sparse, _ = self.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
        parts = [
            self._predict_chunk(ctx, sparse[i : i + _PROMPT_CHUNK], multimask_output)
            for i in range(0, sparse.shape[0], _PROMPT_CHUNK)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _predict_chunk(
        self, ctx: ImageContext, sparse: Tensor, multimask_output: bool
    ) -> tuple[Tensor, Tensor]:
        """Sparse prompt embeddings B x P x C -> (logits B x M x 4h x 4w, IoU B x M)."""
        dec = self.decoder
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)
        queries, keys = self._transformer(ctx, tokens)
        first = 1 if multimask_output else 0
        count = dec.num_mask_tokens - 1 if multimask_output else 1
        hyper = torch.stack(
            [
                dec.output_hypernetworks_mlps[i](queries[:, 1 + i])
                for i in range(first, first + count)
            ],
            dim=1,
        )
        masks = self._upscale_and_apply(keys, hyper, ctx.grid)
        iou = dec.iou_prediction_head(queries[:, 0])[:, first : first + count]
        return masks, iou

    def _transformer(self, ctx: ImageContext, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """TwoWayTransformer.forward on tokens B x T x C -> (queries B x T x C, keys B x N x C)."""
        queries, keys = self._first_layer(ctx, tokens)
        for layer in self.transformer.layers[1:]:
            queries, keys = self._later_layer(layer, ctx, tokens, queries, keys)
        final = self.transformer
        attn_out = _folded_token_to_image(
            final.final_attn_token_to_image, queries + tokens, keys + ctx.key_pe, keys
        )
        return final.norm_final_attn(queries + attn_out), keys

    def _later_layer(
        self,
        layer: TwoWayAttentionBlock,
        ctx: ImageContext,
        tokens: Tensor,
        queries: Tensor,
        keys: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """TwoWayAttentionBlock.forward once the keys differ per prompt (layers 1 and on)."""
        q = queries + tokens
        queries = layer.norm1(queries + _token_attention(layer.self_attn, q, q, queries))
        keys_pe = keys + ctx.key_pe
        t2i = layer.cross_attn_token_to_image
        queries = layer.norm2(
            queries + _folded_token_to_image(t2i, queries + tokens, keys_pe, keys)
        )
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = layer.cross_attn_image_to_token
        scores = _image_to_token_scores(i2t, queries + tokens, None, keys_pe)
        residual = keys + i2t.out_proj.bias
        keys = layer.norm4(_image_to_token(i2t, scores, queries, residual))
        return queries, keys

    def _first_layer(self, ctx: ImageContext, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Layer 0: its image side is the same for every prompt, so nothing is repeated."""
        layer = self.transformer.layers[0]
        b, t, _ = tokens.shape
        if layer.skip_first_layer_pe:
            queries = layer.norm1(_token_attention(layer.self_attn, tokens, tokens, tokens))
        else:
            q = tokens + tokens
            queries = layer.norm1(tokens + _token_attention(layer.self_attn, q, q, tokens))
        t2i = layer.cross_attn_token_to_image
        qh = _heads(t2i.q_proj(queries + tokens), t2i.num_heads)  # B x heads x T x d
        # All prompts' queries share one set of keys: a single attention over B*T queries.
        stacked = qh.transpose(0, 1).reshape(1, t2i.num_heads, b * t, -1)
        out = F.scaled_dot_product_attention(stacked, ctx.t2i_k[None], ctx.t2i_v[None])
        out = out.reshape(t2i.num_heads, b, t, -1).transpose(0, 1)
        queries = layer.norm2(queries + t2i.out_proj(_merge_heads(out)))
        queries = layer.norm3(queries + layer.mlp(queries))
        i2t = layer.cross_attn_image_to_token
        scores = _image_to_token_scores(i2t, queries + tokens, ctx.i2t_q_t, None)
        keys = _image_to_token(i2t, scores, queries, ctx.keys_out_bias)
        return queries, layer.norm4(keys)

    def _upscale_and_apply(self, keys: Tensor, hyper: Tensor, grid: tuple[int, int]) -> Tensor:
        """output_upscaling + hypernetwork product as channel-last matmuls.

        ConvTranspose2d(kernel=stride=2) maps each input pixel to a 2 x 2 block on its own:
        weight in x out x 2 x 2 becomes an in x (2*2*out) matrix. Pixel order of the result is
        (i, j, a, b, c, d) for output row 4i+2a+c and column 4j+2b+d.
        """
        up = self.decoder.output_upscaling
        conv1, norm, act1, conv2, act2 = up[0], up[1], up[2], up[3], up[4]
        b, n, _ = keys.shape
        w1 = conv1.weight.permute(0, 2, 3, 1).flatten(1)  # C x (a, b, o)
        x = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * n, -1), w1)
        x = x.view(b * n * 4, -1)
        x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).flatten(1)  # C/4 x (c, d, o)
        y = act2(torch.addmm(conv2.bias.repeat(4), x, w2))  # (B*N*4) x (4*C/8)
        y = y.view(b, n * 16, -1)
        logits = torch.bmm(hyper, y.transpose(1, 2))  # B x M x (N*16)
        h, w = grid
        m = hyper.shape[1]
        logits = logits.view(b, m, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return logits.reshape(b, m, 4 * h, 4 * w)
