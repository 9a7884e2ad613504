r"""Two causal mixers run in opposite directions: a wrapper that makes any causal mixer
bidirectional.

It is built from the mixer interface alone, so it sits above the layers (which know nothing
of it) and below the blocks and models that use it.
"""

from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from ._mixer import AbstractMixer


class Bidirectional(AbstractMixer):
    r"""Two causal mixers, one run forwards and one backwards in time, outputs summed:
    $y_t = f(x)_t + \overleftarrow{g}(x)_t$ where the second mixer reads the sequence from
    its (true) end.

    The LRU and the diagonal SSM have their own `bidirectional=True` (shared $\Lambda$ and
    $B$, separate $C$, as in the LRU paper); this wrapper makes any causal mixer (minGRU,
    minLSTM, GRU, LSTM) bidirectional.

    **Fields:** `forward`, `backward`: causal mixers with the same input and output sizes.

    !!! example

        ```python
        import jax
        import recurrax

        forward = recurrax.MinGRU(4, 4, key=jax.random.key(0))
        backward = recurrax.MinGRU(4, 4, key=jax.random.key(1))
        mixer = recurrax.Bidirectional(forward, backward)
        y = mixer(jax.random.normal(jax.random.key(2), (10, 4)))  # (10, 4): sees the whole sequence
        ```
    """

    forward: AbstractMixer
    backward: AbstractMixer

    def __init__(self, forward: AbstractMixer, backward: AbstractMixer):
        """**Raises:** `ValueError` if a mixer is bidirectional itself or the sizes differ."""
        for name, mixer in (("forward", forward), ("backward", backward)):
            if not isinstance(mixer, AbstractMixer) or mixer.bidirectional:
                raise ValueError(
                    f"Bidirectional: `{name}` must be a causal recurrax mixer, got {mixer!r:.80}."
                )
        sizes = [(m.input_size, m.output_size) for m in (forward, backward)]
        if sizes[0] != sizes[1]:
            raise ValueError(
                f"Bidirectional: `forward` and `backward` must have the same (input_size, "
                f"output_size), got {sizes[0]} and {sizes[1]}."
            )
        self.forward, self.backward = forward, backward

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def output_size(self) -> int:
        return self.forward.output_size

    @property
    def bidirectional(self) -> bool:
        return True

    def _unavailable(self, what: str):
        return ValueError(
            f"Bidirectional: `{what}` is undefined for a bidirectional mixer (its reverse "
            f"direction needs the whole sequence); call it on the full sequence instead."
        )

    def init_state(self) -> PyTree[Array]:
        raise self._unavailable("init_state")

    def step(self, h, x_t):
        raise self._unavailable("step")

    def scan(self, h, x, *, reverse=False, mask=None, resets=None):
        raise self._unavailable("scan")

    def __call__(
        self,
        x: Float[Array, "length input"],
        *,
        mask: Bool[Array, " length"] | None = None,
        resets: Bool[Array, " length"] | None = None,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "length output"]:
        """`forward(x) + backward` run in reverse time, both from their initial states;
        `(length, output_size)`. With `resets`, both directions restart at every segment
        boundary."""
        del key
        y_forward = self.forward(x, mask=mask, resets=resets)
        _, y_backward = self.backward.scan(
            self.backward.init_state(), x, reverse=True, mask=mask, resets=resets
        )
        return y_forward + y_backward
