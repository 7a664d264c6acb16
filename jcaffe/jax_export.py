"""A Net (or a range of its layers) as a pure JAX function, for jax.grad, vmap,
jit, optax or Flax code.

    f = net.to_jax()                      # or net.to_jax(start="ip1", end="relu1")
    params, inputs = f.params, f.inputs_from_net()
    outs = f(params, inputs)              # {blob name: array}
    g = jax.grad(f.loss)(params, inputs)  # same pytree structure as params

``params`` is a pytree ``{layer name: {param index: array}}`` (indexed like
``net.params[name][k]``); a param shared by name appears once, under the layer
that owns it. ``inputs`` is ``{blob name: array}`` for every blob the
range reads but does not compute (for the whole net: the Input layers' tops).
The function returns the net's outputs (or, with ``end``, the tops of ``end``),
as ``net.forward`` does; ``f.loss`` is the weighted sum of the loss tops in the
range (Caffe's loss: loss_weight x sum of the top).

Each layer runs its own JAX forward, so ``jax.grad`` differentiates the same
computation whose hand-written backward the Net runs. User Python layers can be
included when they define ``jax_forward(self, params, bottoms) -> tops``;
other Python layers cannot be exported (an error names them). Layers that
update their params in forward (BatchNorm's running statistics) do not do so
here: the function is pure. Recurrent layers (RNN, LSTM without expose_hidden)
start from zero state unless given one: ``f(params, inputs, state=s)`` and
``f.loss(..., state=s)`` start from ``s`` ({layer name: (h,) or (h, c)}, as
``f.state_from_net()`` reads the Net's carried h_T), and ``f.carry(params,
inputs, s)`` returns ``(outputs, new state)`` for the next chunk, as the Net
carries it; without a state, a forward whose ``cont`` is nonzero at t = 0 (where
Caffe would continue the stream) logs a warning.
Random layers (Dropout in TRAIN, random DummyData) draw from ``rng``
(``jax.random.PRNGKey(0)`` when not given). Input shapes may differ from the
net's blobs (a layer's shape logic runs at trace time), and ``jax.vmap`` over
an extra leading axis works as usual.
"""
import jax
import jax.numpy as jnp

from .errors import JcaffeError


class ExportError(JcaffeError, ValueError):
    """A layer that cannot be expressed as a pure JAX function."""


class JaxNet:
    """``f(params, inputs, rng=None) -> {blob: array}``; see the module docstring."""

    def __init__(self, net, start=None, end=None):
        n = len(net._slots)
        lo = net._layer_index(start) if start is not None else 0
        hi = net._layer_index(end) if end is not None else n - 1
        if lo > hi:
            raise ExportError("to_jax: start '%s' comes after end '%s'" % (start, end))
        self.net_name = net.name
        self.slots = net._slots[lo:hi + 1]
        self._owner = {}            # pid -> (layer name, k)
        for pid, (li, k) in enumerate(net._param_owner_slot):
            self._owner[pid] = (net._slots[li].layer.name, k)
        written, reads = set(), []
        for s in self.slots:
            layer = s.layer
            if layer.is_host and not callable(getattr(layer, "jax_forward", None)):
                raise ExportError(
                    "to_jax: host layer '%s' (%s) has no jax_forward(self, params, bottoms) -> tops, "
                    "so it cannot be part of a JAX function; define it, or export a range without "
                    "it (start=/end=)" % (layer.name, getattr(layer, "python_class", type(layer).__name__)))
            if not layer.is_host and not layer.forward_writes_tops:   # Input: its tops are inputs
                for t in s.tops:
                    if t not in written and t not in reads:
                        reads.append(t)
                continue
            for b in s.bottoms:
                if b not in written and b not in reads:
                    reads.append(b)
            written.update(s.tops)
        self.input_names = reads
        if end is not None:
            self.output_names = list(self.slots[-1].tops)
        else:
            self.output_names = [o for o in net.outputs if o in written or o in reads]
        self.loss_weights = {}
        for s in self.slots:
            for t, w in zip(s.tops, s.layer.loss):
                if w:
                    self.loss_weights[t] = float(w)
        self._net = net
        self.params = self.params_from_net()

    # -- state from the Net --------------------------------------------------------
    def params_from_net(self):
        """The pytree of the Net's current param values used by this range."""
        out = {}
        for s in self.slots:
            for pid in s.param_ids:
                name, k = self._owner[pid]
                blob = self._net.layer_dict[name].blobs[k]
                out.setdefault(name, {})[k] = jnp.asarray(blob.host_data())
        return out

    def inputs_from_net(self):
        """{input blob: the Net's current data}."""
        return {name: jnp.asarray(self._net.blobs[name].host_data()) for name in self.input_names}

    def state_from_net(self):
        """{layer name: tuple of arrays}: the state each recurrent layer of the range
        carries in the Net (its last forward's h_T, c_T), or None before its first."""
        return {s.layer.name: s.layer.hidden_state for s in self.slots
                if s.layer.carries_state}

    # -- the function --------------------------------------------------------------
    def _layer_params(self, s, params):
        vals = []
        for blob, pid in zip(s.layer.blobs, s.param_ids):
            name, k = self._owner[pid]
            try:
                v = params[name][k]
            except (KeyError, IndexError):
                raise ExportError("params has no entry %s[%d] (layer '%s' param %d)"
                                  % (name, k, s.layer.name, len(vals))) from None
            if tuple(v.shape) != tuple(blob.shape):
                v = jnp.reshape(v, blob.shape)
            vals.append(v)
        return vals

    def _run(self, params, inputs, rng, state=None):
        """-> (every blob's value, new state); ``state`` None: none given (zeros, and
        no new state), else {layer name: tuple}, zeros for a layer not in it."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ExportError("inputs lack %s (this function reads %s)" % (missing, self.input_names))
        env = {n: jnp.asarray(inputs[n]) for n in self.input_names}
        if rng is None:
            rng = jax.random.PRNGKey(0)
        new_state = {}
        for s in self.slots:
            layer = s.layer
            if not layer.is_host and not layer.forward_writes_tops:
                continue
            bottoms = [env[b] for b in s.bottoms]
            lp = self._layer_params(s, params)
            if layer.is_host:
                tops = [jnp.asarray(t) for t in layer.jax_forward(lp, bottoms)]
            else:
                layer.do_reshape([tuple(b.shape) for b in bottoms])
                key = jax.random.fold_in(rng, s.index) if layer.needs_rng else None
                if state is not None and layer.carries_state:
                    start = state.get(layer.name)
                    if start is None:
                        start = tuple(jnp.zeros(shape, bottoms[0].dtype)
                                      for shape in layer.state_shapes())
                    out = layer.forward(lp, bottoms, key, state=tuple(start))
                    tops, new_state[layer.name] = out[0], tuple(out[2])
                else:
                    tops = layer.forward(lp, bottoms, key)[0]
            if len(tops) != len(s.tops):
                raise ExportError("%s layer '%s' returned %d tops, expected %d"
                                  % (layer.type, layer.name, len(tops), len(s.tops)))
            for name, value in zip(s.tops, tops):
                env[name] = value
        return env, new_state

    def __call__(self, params, inputs, rng=None, state=None):
        env, _ = self._run(params, inputs, rng, state)
        return {name: env[name] for name in self.output_names}

    def carry(self, params, inputs, state, rng=None):
        """(outputs, new state): a forward from ``state`` (see the module docstring;
        {} starts every recurrent layer from zero) and the state it leaves, which the
        next chunk of the streams starts from (Caffe's h_T copied into h_0)."""
        env, new_state = self._run(params, inputs, rng, state)
        return {name: env[name] for name in self.output_names}, new_state

    def loss(self, params, inputs, rng=None, state=None):
        """The weighted sum of the range's loss tops (a scalar, for jax.grad)."""
        if not self.loss_weights:
            raise ExportError("to_jax: the exported layers of net '%s' have no loss top"
                              % self.net_name)
        env, _ = self._run(params, inputs, rng, state)
        total = None
        for name, w in self.loss_weights.items():
            term = jnp.sum(env[name]) * jnp.asarray(w, env[name].dtype)
            total = term if total is None else total + term
        return total

    def __repr__(self):
        return "<JaxNet of '%s': layers %s..%s, inputs %s, outputs %s>" % (
            self.net_name, self.slots[0].layer.name, self.slots[-1].layer.name,
            self.input_names, self.output_names)


def to_jax(net, start=None, end=None):
    """``net`` (layers ``start``..``end``, names, inclusive) as a :class:`JaxNet`."""
    return JaxNet(net, start, end)
