// A small user-written transformer trained with SDP on a synthetic Markov language (loss floor ~1.08 nats):
// once at neuron level (each worker holds half of every layer's attention heads and MLP units) and once at
// block level (each worker holds half of the layers). Exits 1 unless both reach the stated loss.
using Sdp.Engine;
using Sdp.Engine.Backends.Cpu;
using Sdp.Engine.Nn;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Models.Data;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;

const int Vocab = 256, Dim = 64, Heads = 4, Hidden = 128, Layers = 2, Seq = 32, Batch = 8, Steps = 300;
const double TargetLoss = 1.5;
DeviceScope.SetProcessDefault(CpuBackend.Instance);
bool reached = true;
foreach (var level in new[] { SubnetLevel.Neuron, SubnetLevel.Block })
{
    var model = SubnetworkModel.For(() => new TinyTransformer(Vocab, Dim, Heads, Hidden, Layers), net => new Classifier(net, net.Forward),
        net => level == SubnetLevel.Neuron
            ? net.Layers.SelectMany(l => new UnitDeclaration[] { Units.Heads(l.Q, l.K, l.V, l.O, Dim / Heads), Units.Hidden(l.Up, l.Down) })
            : net.Layers.Select(l => Units.Block(l)));
    var chain = new MarkovChain(vocab: Vocab, seed: 1);
    using var trainer = new Trainer(model,
        new SdpOptions { Workers = 4, Mode = ParallelMode.Sdp, Level = level, Masking = Masking.Forward, Coverage = 0.5 },
        parameters => new AdamW(parameters, 3e-3), w => new TokenBatches(new MarkovTokenSource(chain, Batch, Seq, w, 4, streamSeed: 2)),
        new TrainerOptions { Steps = Steps, Schedule = new ConstantSchedule(3e-3), Clip = 1.0 });
    trainer.Run();
    double loss = trainer.Evaluate(new TokenBatches(new MarkovTokenSource(chain, Batch, Seq, streamSeed: 3)), 8).MeanLoss;
    long dense = model.Units.TotalParams, held = trainer.Plan!.HeldParams(0);
    Console.WriteLine($"{level} level: held-out loss {loss:F3} (target {TargetLoss}, floor {chain.EntropyRate:F3}); worker 0 holds {held:N0} of {dense:N0} parameters");
    reached &= loss <= TargetLoss;
}
return reached ? 0 : 1;

/// <summary>ids (B, T) -> logits (B, T, V): token embedding, pre-norm layers of causal attention and a ReLU MLP, head.</summary>
sealed class TinyTransformer : Module
{
    private readonly Embedding _embed;
    private readonly RmsNorm _norm;
    private readonly Linear _head;
    private readonly List<Layer> _layers = [];

    public TinyTransformer(int vocab, int dim, int heads, int hidden, int layers)
    {
        var rng = new Rng(0);
        _embed = RegisterModule("embed", new Embedding(vocab, dim, rng, 0.02));
        var list = RegisterModule("layers", new Layer.List());
        for (int i = 0; i < layers; i++) _layers.Add(list.Add(i.ToString(), new Layer(dim, heads, hidden, rng)));
        _norm = RegisterModule("norm", new RmsNorm(dim, 1e-5));
        _head = RegisterModule("head", new Linear(dim, vocab, bias: false, rng));
    }

    public IReadOnlyList<Layer> Layers => _layers;

    public Tensor Forward(Tensor ids)
    {
        var x = _embed.Forward(ids);
        foreach (var layer in _layers.Where(l => !l.IsDropped)) // SDP drops the layers a block-level worker does not hold
        {
            using var old = x;
            x = layer.Forward(old);
        }
        using (x)
        using (var normed = _norm.Forward(x)) return _head.Forward(normed);
    }
}

/// <summary>x + attention(norm(x)), then + down(relu(up(norm(x)))). Widths are read from the weights: SDP narrows them.</summary>
sealed class Layer : Module
{
    private readonly RmsNorm _attnNorm, _mlpNorm;
    private readonly int _headDim;

    public Layer(int dim, int heads, int hidden, Rng rng)
    {
        _headDim = dim / heads;
        _attnNorm = RegisterModule("attn_norm", new RmsNorm(dim, 1e-5));
        (Q, K, V, O) = (Add("q", new Linear(dim, dim, false, rng)), Add("k", new Linear(dim, dim, false, rng)), Add("v", new Linear(dim, dim, false, rng)), Add("o", new Linear(dim, dim, false, rng)));
        _mlpNorm = RegisterModule("mlp_norm", new RmsNorm(dim, 1e-5));
        (Up, Down) = (Add("up", new Linear(dim, hidden, true, rng)), Add("down", new Linear(hidden, dim, true, rng)));
    }

    public Linear Q { get; }
    public Linear K { get; }
    public Linear V { get; }
    public Linear O { get; }
    public Linear Up { get; }
    public Linear Down { get; }

    public Tensor Forward(Tensor x)
    {
        using var normed = _attnNorm.Forward(x);
        using var q = SplitHeads(Q.Forward(normed));
        using var k = SplitHeads(K.Forward(normed));
        using var v = SplitHeads(V.Forward(normed));
        using var attended = Ops.CausalAttention(q, k, v);
        using var merged = Ops.MergeHeads(attended);
        using var mixed = O.Forward(merged);
        using var h = Ops.Add(x, mixed);
        using var normed2 = _mlpNorm.Forward(h);
        using var hidden = Ops.Relu(Up.Forward(normed2));
        using var down = Down.Forward(hidden);
        return Ops.Add(h, down);
    }

    /// <summary>(B, T, heads·D) -> (B, heads, T, D), however many heads this worker holds.</summary>
    private Tensor SplitHeads(Tensor flat)
    {
        using (flat)
        using (var split = flat.Reshape(flat.Shape[0], flat.Shape[1], flat.Shape[2] / _headDim, _headDim)) return Ops.SplitHeads(split);
    }

    private Linear Add(string name, Linear layer) => RegisterModule(name, layer);

    public sealed class List : Module
    {
        public Layer Add(string name, Layer layer) => RegisterModule(name, layer);
    }
}
