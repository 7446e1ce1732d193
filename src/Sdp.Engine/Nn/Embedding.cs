namespace Sdp.Engine.Nn;

/// <summary>Row lookup in a (V, C) table: torch.nn.Embedding, initialised N(0, 1) unless overridden.</summary>
public sealed class Embedding : Module
{
    public Embedding(int count, int dim, Rng rng, double std = 1.0, DType dtype = DType.Float32)
    {
        Weight = RegisterParameter("weight", Init.Normal(NewParameterTensor(new Shape(count, dim), dtype), rng, std));
    }

    public Tensor Weight { get; }

    /// <summary>ids (...) int -> y (..., C).</summary>
    public Tensor Forward(Tensor ids) => Ops.Embedding(Weight, ids);
}
