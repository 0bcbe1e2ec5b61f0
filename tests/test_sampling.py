"""Samplers: cache vs. no cache, CUDA graphs vs. compiled, the overlapped many-batch mode vs. one-batch calls,
guidance, top-k/top-p, seeds, decoding, argument checks."""

import copy
from dataclasses import replace

import pytest
import torch
from helpers import randomised

from varlib import fast_sampling, sampling
from varlib.config import SampleConfig, TokenizerConfig, VARConfig, get_profile
from varlib.data import to_uint8
from varlib.fast_sampling import VARSampler
from varlib.sampling import (
    batch_generator,
    sample_many,
    sample_var,
    sample_var_reference,
    top_k_top_p,
)
from varlib.study import Study
from varlib.tokenizer import VQVAE
from varlib.transformer import VAR, ARTransformer

SCALES = (1, 2, 3, 4)
TOK = dict(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, using_sa=False, using_mid_sa=False, vocab_size=32,
           z_channels=8)
SC = SampleConfig(cfg=1.5, top_k=12, top_p=0.9)


@pytest.fixture(scope="module")
def var_pair():
    torch.manual_seed(0)
    vae = VQVAE(TokenizerConfig(**TOK, scales=SCALES)).eval()
    model = randomised(VAR(VARConfig(depth=2, head_dim=16, num_classes=5, vocab_size=32, z_channels=8,
                                     scales=SCALES)))
    return model, vae


@pytest.fixture(scope="module")
def ar_pair():
    torch.manual_seed(0)
    vae = VQVAE(TokenizerConfig(**TOK, scales=(4,))).eval()
    model = randomised(ARTransformer(VARConfig(depth=2, head_dim=16, num_classes=5, vocab_size=32, z_channels=8,
                                               scales=(4,))))
    return model, vae


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def same_tokens(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


LABELS = torch.tensor([0, 1, 4, 5, 2, 2])


@pytest.mark.parametrize("sc", [SC, SampleConfig(cfg=3.0, cfg_schedule="constant"), SampleConfig(cfg=0.0, top_k=5),
                                replace(SC, temperature=0.7, smooth=True)])
def test_cached_sampler_equals_reference_sampler(var_pair, sc):
    model, vae = var_pair
    idx_a, img_a = sample_var(model, vae, LABELS, sc, gen())
    idx_b, img_b = sample_var_reference(model, vae, LABELS, sc, gen())
    assert [t.shape for t in idx_a] == [(6, pn * pn) for pn in SCALES]
    assert same_tokens(idx_a, idx_b)
    torch.testing.assert_close(img_a, img_b, rtol=1e-4, atol=1e-4)
    assert img_a.shape == (6, 1, 8, 8) and img_a.abs().max() <= 1


def test_compiled_sampler_equals_eager_sampler(var_pair):
    """compile=True (one compiled graph set shared by the blocks, compiled decoder) draws the same tokens."""
    model, vae = var_pair
    idx_a, img_a = sample_var(model, vae, LABELS, SC, gen(), compile=True)
    idx_b, img_b = sample_var(model, vae, LABELS, SC, gen())
    assert same_tokens(idx_a, idx_b)
    torch.testing.assert_close(img_a, img_b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_graphed_sampler_equals_compiled_sampler(var_pair, amp):
    """VARSampler replays per-scale CUDA graphs of the compiled blocks: the tokens and images of sample_var(compile=
    True) (itself held equal to eager above), on the capturing call and on replays with new labels and guidance off."""
    model, vae = (copy.deepcopy(m).cuda() for m in var_pair)
    sampler = VARSampler(model, vae)
    cuda_gen = lambda: torch.Generator(device="cuda").manual_seed(3)  # noqa: E731
    for labels, sc in [(LABELS, SC), (LABELS.flip(0), SC), (LABELS, replace(SC, cfg=0.0))]:
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            idx_a, img_a = sampler(labels, sc, cuda_gen())
            idx_b, img_b = sample_var(model, vae, labels, sc, cuda_gen(), compile=True)
        assert same_tokens(idx_a, idx_b)
        torch.testing.assert_close(img_a, img_b)
    assert len(sampler.graphs) == 2  # guided (2B rows) and unguided (B rows), each captured once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_graphed_ar_sampler_equals_the_compiled_token_loop(ar_pair, amp):
    """ARSampler replays one CUDA graph per token position of the compiled blocks: the tokens and images of the
    plain next-token loop over the same compiled blocks, on the capturing call and on a replay with new labels."""
    model, vae = (copy.deepcopy(m).cuda() for m in ar_pair)
    sampler = fast_sampling.ARSampler(model, vae)
    cuda_gen = lambda: torch.Generator(device="cuda").manual_seed(3)  # noqa: E731
    for labels in (LABELS, LABELS.flip(0)):
        labels = labels.cuda()
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None), torch.no_grad():
            idx_a, img_a = sampler(labels, SC, cuda_gen())
            steps = sampling.CachedSteps(model, sampling.both_branches(labels, model.num_classes, True), 1,
                                         compile=True)
            idx_b, f_hat = sampling.ar_loop(model.eval(), vae.eval(), labels, SC, cuda_gen(), steps=steps)
            img_b = vae.fhat_to_img(f_hat, compile=True)
        assert same_tokens(idx_a, idx_b)
        torch.testing.assert_close(img_a, img_b)
    assert len(sampler.graphs) == 1 and len(next(iter(sampler.graphs.values())).graphs) == model.L


def test_graphed_ar_sampler_needs_a_next_token_model(var_pair):
    with pytest.raises(ValueError, match="ARTransformer"):
        fast_sampling.ARSampler(*var_pair)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a GPU (run on the device machine)")
@pytest.mark.parametrize("late_decoder", [False, True])
def test_overlapped_batches_equal_one_batch_calls(var_pair, late_decoder, monkeypatch):
    """VARSampler.many (the decoder of batch i on its own stream while batch i+1 draws) gives the tokens and images of
    one-batch calls under the same generators, bf16 and guided, also across a change of batch size (a new capture
    while a decoder runs). With a decoder held back by ~30 ms of GPU spinning, the next batches allocate on the token
    stream while it still has to read its f_hat: memory reused too early would change the images.

    The one-batch calls run twice and the second pass is compared: the compiled decoder recompiles with dynamic
    shapes at the first change of batch size, and graphs compiled before and after differ in float rounding."""
    model, vae = (copy.deepcopy(m).cuda() for m in var_pair)
    batches = [LABELS, LABELS.flip(0), LABELS[:4], LABELS]
    generators = lambda: [torch.Generator(device="cuda").manual_seed(10 + i) for i in range(len(batches))]  # noqa: E731
    one_batch = VARSampler(model, vae)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(2):
            expected = [one_batch(labels, SC, g) for labels, g in zip(batches, generators(), strict=True)]
    sampler = VARSampler(model, vae)  # captures its graphs inside `many`
    decode = vae.fhat_to_img

    def late(f_hat, compile=False):
        torch.cuda._sleep(50_000_000)  # on the decoder's stream
        return decode(f_hat, compile)

    with torch.autocast("cuda", dtype=torch.bfloat16):
        if late_decoder:
            monkeypatch.setattr(vae, "fhat_to_img", late)
        got = list(sampler.many(batches, SC, generators()))  # captures 12 rows, then 8 rows mid-stream
    assert len(got) == len(batches)
    for (idx_a, img_a), (idx_b, img_b) in zip(got, expected, strict=True):
        assert same_tokens(idx_a, idx_b)
        torch.testing.assert_close(img_a, img_b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA streams need a GPU (run on the device machine)")
def test_fast_sample_many_keeps_the_batches_and_streams_of_sample_many(var_pair):
    """fast_sampling.sample_many = VARSampler per batch of batch_size, batch i with batch_generator(seed, i). (A first
    run compiles the decoder for both batch sizes, as in the test above.)"""
    model, vae = (copy.deepcopy(m).cuda() for m in var_pair)
    labels = torch.tensor([3, 3, 1, 0, 2])
    for _ in range(2):
        tokens, images = fast_sampling.sample_many(model, vae, labels, SC, batch_size=2, seed=7)
    sampler = VARSampler(model, vae)
    for i, rows in enumerate(torch.arange(5).split(2)):
        idx_Bl, images_B = sampler(labels[rows], SC, batch_generator(7, i, "cuda"))
        assert torch.equal(tokens[rows], torch.cat(idx_Bl, dim=1).cpu())
        assert torch.equal(images[rows], to_uint8(images_B).cpu())
    assert tokens.device.type == images.device.type == "cpu" and images.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_fast_sample_many_samples_the_next_token_ars_through_ar_sampler(ar_pair):
    """fast_sampling.sample_many of an ARTransformer = ARSampler per batch of batch_size, batch i with
    batch_generator(seed, i) (as for VAR above, a first run compiles the decoder for both batch sizes)."""
    model, vae = (copy.deepcopy(m).cuda() for m in ar_pair)
    labels = torch.tensor([3, 3, 1, 0, 2])
    for _ in range(2):
        tokens, images = fast_sampling.sample_many(model, vae, labels, SC, batch_size=2, seed=7)
    sampler = fast_sampling.ARSampler(model, vae)
    for i, rows in enumerate(torch.arange(5).split(2)):
        idx_Bl, images_B = sampler(labels[rows], SC, batch_generator(7, i, "cuda"))
        assert torch.equal(tokens[rows], torch.cat(idx_Bl, dim=1).cpu())
        assert torch.equal(images[rows], to_uint8(images_B).cpu())
    assert tokens.shape == (5, model.L) and images.dtype == torch.uint8 and images.device.type == "cpu"


def study_on(device: str) -> Study:
    """A Study whose transformers know the 5 classes of the tiny models here (sampling reads nothing else of it)."""
    return Study(get_profile("smoke", num_classes=5), device, seed=4, classes=tuple("abcde"), progress=False)


@pytest.mark.parametrize("pair", ["var_pair", "ar_pair"])
def test_study_sample_off_the_gpu_is_the_plain_loop(pair, request):
    """Study.sample on the CPU: sampling.sample_many with the seed of the study's sample stream."""
    model, vae = request.getfixturevalue(pair)
    study, labels = study_on("cpu"), torch.tensor([3, 3, 1, 0, 2])
    tokens, images = study.sample(model, vae, labels, SC, stream=1, batch_size=2)
    expected = sample_many(model, vae, labels, SC, batch_size=2, seed=study.sampling_seed(1))
    assert torch.equal(tokens, expected[0]) and torch.equal(images, expected[1])
    assert images.dtype == torch.uint8 and tokens.shape == (5, model.L)
    assert not torch.equal(study.sample(model, vae, labels, SC, stream=2, batch_size=2)[0], tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("pair", ["var_pair", "ar_pair"])
def test_study_sample_on_a_gpu_takes_the_graphed_samplers(pair, request):
    """Study.sample of a model on the GPU: fast_sampling.sample_many (VARSampler, ARSampler; held equal above to their
    one-batch calls, and those to the compiled loops) with the seed of the study's sample stream; the outputs of
    the plain loop in kind (int64 tokens and uint8 images, on the CPU). One batch size, and a first call that
    compiles the decoder for it, so that both calls below replay the same compiled code."""
    model, vae = (copy.deepcopy(m).cuda() for m in request.getfixturevalue(pair))
    study, labels = study_on("cuda"), torch.tensor([3, 3, 1, 0, 2, 4])
    fast_sampling.sample_many(model, vae, labels, SC, batch_size=3, seed=0)
    tokens, images = study.sample(model, vae, labels, SC, stream=1, batch_size=3)
    expected = fast_sampling.sample_many(model, vae, labels, SC, batch_size=3, seed=study.sampling_seed(1))
    assert torch.equal(tokens, expected[0]) and torch.equal(images, expected[1])
    plain = sample_many(model, vae, labels, SC, batch_size=3, seed=study.sampling_seed(1))
    assert [(t.dtype, t.shape, t.device) for t in (tokens, images)] == [(t.dtype, t.shape, t.device) for t in plain]


def test_graphed_sampler_needs_a_gpu(var_pair):
    with pytest.raises(ValueError, match="CUDA graphs"):
        VARSampler(*var_pair)


def test_fast_sample_many_checks_arguments_before_model_work(var_pair):
    model, vae = var_pair
    with pytest.raises(ValueError, match="batch_size"):
        fast_sampling.sample_many(model, None, LABELS, SC, batch_size=0, seed=0)
    with pytest.raises(ValueError, match="labels_B"):
        fast_sampling.sample_many(model, None, torch.tensor([0, 6]), SC, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="CUDA graphs"):  # valid arguments, a CPU model
        fast_sampling.sample_many(model, vae, LABELS, SC, batch_size=2, seed=0)


def test_many_wants_one_generator_per_batch():
    """The pairs of VARSampler.many are read lazily; a short iterable on either side is an error, not a silent stop."""
    assert list(fast_sampling.one_each(iter("ab"), iter("xy"))) == [("a", "x"), ("b", "y")]
    for labels, generators in [("abc", "xy"), ("ab", "xyz")]:
        pairs = fast_sampling.one_each(iter(labels), iter(generators))
        assert next(pairs) == ("a", "x") and next(pairs) == ("b", "y")
        with pytest.raises(ValueError, match="one generator per batch"):
            next(pairs)


def test_cfg_zero_is_unguided_and_cfg_uses_the_null_class(var_pair):
    model, vae = var_pair
    other = VAR(model.cfg).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.class_emb.weight[model.num_classes] += 1.0  # a different null class: only guidance may notice
    labels = torch.tensor([0, 1, 4, 2])  # no null-class row: its conditional branch would change too
    for sc, equal in [(replace(SC, cfg=0.0), True), (replace(SC, cfg=0.0, cfg_schedule="constant"), True),
                      (replace(SC, cfg=2.0), False)]:
        a, _ = sample_var(model, vae, labels, sc, gen())
        b, _ = sample_var(other, vae, labels, sc, gen())
        assert same_tokens(a, b) == equal
        assert torch.equal(a[0], b[0]), "the linear ramp has t = 0 at the first scale"


def test_top_k_one_is_greedy(var_pair):
    model, vae = var_pair
    greedy = SampleConfig(cfg=1.0, top_k=1)
    a, _ = sample_var(model, vae, LABELS, greedy, gen(1))
    b, _ = sample_var(model, vae, LABELS, greedy, gen(2))
    assert same_tokens(a, b)
    with torch.no_grad():
        first = model(LABELS, torch.zeros(6, 0, 8))[:, 0]
    assert torch.equal(a[0][:, 0], first.argmax(-1))


def test_top_k_top_p_keeps_the_authors_candidate_set():
    """The kept set equals the authors' rule (mask below the k-th largest; sort ascending, drop where the
    ascending cumulative probability <= 1 - top_p, keep the max) computed over the whole vocabulary."""
    logits = torch.randn(3, 7, 50, generator=gen()) * 3
    for top_k, top_p in [(10, 1.0), (0, 0.8), (20, 0.5), (50, 0.96), (5, 1e-3)]:
        theirs = logits.clone()
        if top_k:
            theirs[theirs < theirs.topk(top_k)[0][..., -1:]] = -torch.inf
        if top_p < 1:
            s, order = theirs.sort(-1)
            drop = s.softmax(-1).cumsum(-1) <= 1 - top_p
            drop[..., -1] = False
            theirs[drop.scatter(-1, order, drop)] = -torch.inf
        vals, ids = top_k_top_p(logits, top_k, top_p)
        ours = torch.full_like(logits, -torch.inf).scatter(-1, ids, vals)
        assert torch.equal(ours.isfinite(), theirs.isfinite()), (top_k, top_p)


def test_categorical_draws_follow_the_softmax():
    logits = torch.tensor([[[0.0, 1.0, 2.0, -torch.inf]]]).expand(1, 20000, 4)
    draws = sampling.categorical(logits, gen())
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, logits[0, 0].softmax(-1), atol=0.015, rtol=0)


def test_seeds_reproduce_and_batches_get_their_own_streams(var_pair):
    model, vae = var_pair
    labels = torch.tensor([3, 3, 3, 3])
    tokens, images = sample_many(model, vae, labels, SC, batch_size=2, seed=7)
    again, _ = sample_many(model, vae, labels, SC, batch_size=2, seed=7)
    other, _ = sample_many(model, vae, labels, SC, batch_size=2, seed=8)
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)
    assert tokens.shape == (4, model.L) and images.dtype == torch.uint8 and images.shape == (4, 1, 8, 8)
    assert not torch.equal(tokens[:2], tokens[2:]), "two batches with the same labels drew the same noise (#69)"


def test_decoder_in_chunks_gives_the_images_of_one_call(var_pair):
    """fhat_to_img decodes DECODE_CHUNK images per call: the same float32 images as one decoder call over all."""
    _, vae = var_pair
    f_hat = torch.randn(5, 8, 4, 4, generator=gen())
    chunked = copy.deepcopy(vae)
    chunked.DECODE_CHUNK = 2  # 2 + 2 + 1
    with torch.no_grad():
        whole = vae.decoder(vae.post_quant_conv(f_hat)).clamp(-1, 1)
        images = chunked.fhat_to_img(f_hat)
    assert images.dtype == torch.float32 and images.shape == (5, 1, 8, 8)
    torch.testing.assert_close(images, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (dict(labels=torch.tensor([0, 6])), "labels_B"),
    (dict(labels=torch.tensor([], dtype=torch.long)), "labels_B"),
    (dict(labels=torch.tensor([0.0, 1.0])), "integer"),
    (dict(sc=SampleConfig(cfg_schedule="cosine")), "cfg_schedule"),
])
def test_bad_arguments_raise_before_model_work(var_pair, bad, match):
    model, _ = var_pair
    labels, sc = bad.get("labels", LABELS), bad.get("sc", SC)
    with pytest.raises(ValueError, match=match):  # vae=None: any model work would fail differently
        sample_var(model, None, labels, sc, gen())
    with pytest.raises(ValueError, match=match):
        sample_var_reference(model, None, labels, sc, gen())
