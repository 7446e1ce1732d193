using Sdp.Engine.Autograd;

namespace Sdp.Engine;

public static partial class Ops
{
    /// <summary>
    /// Inverted dropout: each element is zeroed with probability <paramref name="p"/> and the rest are
    /// scaled by 1/(1-p), so the expectation is unchanged and evaluation needs no rescaling.
    /// The mask is a pure function of (seed, flat element index) (see <see cref="Backends.IBackend.Dropout"/>),
    /// so every backend and every rerun draws the same mask for the same seed; callers advance the seed
    /// per step and per layer. When <paramref name="training"/> is false or p = 0 the result is x
    /// itself (a new handle on the same storage whose gradient passes straight through), and no mask is made.
    /// x (...) -> y (...).
    /// </summary>
    public static Tensor Dropout(Tensor x, double p, ulong seed, bool training = true)
    {
        const string op = "dropout";
        RequireFloat(op, x);
        if (!(p >= 0 && p <= 1)) throw new ArgumentOutOfRangeException(nameof(p), $"{op}: probability p = {p} must be in [0, 1] (input {x.Describe()})");
        if (!training || p == 0) return Reshape(x, x.Shape.ToArray());
        var y = EmptyLike(x);
        using var mask = EmptyLike(x);
        x.Backend.Dropout(x, p, seed, mask, y);
        return NeedsGrad(x) ? Record(new DropoutNode(y, x, mask)) : y;
    }

    private sealed class DropoutNode : TapeNode
    {
        private readonly Tensor _mask;

        public DropoutNode(Tensor y, Tensor x, Tensor mask) : base(y, x) => _mask = Save(mask);

        protected internal override void Backward(Tensor dy, GradSink grads)
        {
            var dx = grads.For(Inputs[0]);
            dx?.Backend.DropoutBackward(dy, _mask, dx);
        }
    }
}
