using Sdp.Engine.Nn;

namespace Sdp.Engine.Subnetworks;

/// <summary>
/// One declaration of a model's maskable units in terms of its modules (method reference §3), like a wrap policy
/// names modules rather than tensors. <see cref="DeclaredUnits.Resolve"/> turns a model's declarations into
/// <see cref="MaskableUnits"/>: tensor names, parameter counts and FLOPs all come from the modules, never typed.
/// Made by <see cref="Units"/>.
/// </summary>
public abstract record UnitDeclaration;

/// <summary>
/// Neuron level: the hidden units between <paramref name="Producer"/> (a Linear or Conv2d whose output rows or
/// channels they are) and <paramref name="Consumer"/> (a Linear or Conv2d whose input columns or channels they
/// are); <paramref name="Alongside"/> are sliced on the same units (SwiGLU's gate: Linear rows; a BatchNorm2d on
/// the channels). Unit t is row t of the producer (and its bias), column t of the consumer and element t of each
/// module alongside.
/// </summary>
public sealed record HiddenUnits(Module Producer, Module Consumer, IReadOnlyList<Module> Alongside) : UnitDeclaration;

/// <summary>
/// Neuron level: attention heads by key/value group. Unit g is key/value head g (<paramref name="HeadDim"/> rows
/// of <paramref name="Key"/> and <paramref name="Value"/>) with the query heads that share it (their rows of
/// <paramref name="Query"/>, their columns of <paramref name="Output"/>).
/// </summary>
public sealed record HeadUnits(Linear Query, Linear Key, Linear Value, Linear Output, int HeadDim) : UnitDeclaration;

/// <summary>
/// Block level: <paramref name="Block"/> (and <paramref name="Alongside"/>, e.g. its pre-norm) is one unit, named
/// after the block. A worker that does not hold it skips it; the modules in <paramref name="Keep"/> (a projection
/// shortcut) are not part of the unit: every worker keeps them and the block runs them when skipped.
/// </summary>
public sealed record BlockUnit(Module Block, IReadOnlyList<Module> Alongside, IReadOnlyList<Module> Keep) : UnitDeclaration
{
    /// <summary>The same unit, with <paramref name="modules"/> kept when the block is skipped.</summary>
    public BlockUnit Keeping(params Module?[] modules) => this with { Keep = [.. Keep, .. modules.OfType<Module>()] };
}

/// <summary>Declaring units: <c>Units.Hidden(mlp.Up, mlp.Down)</c>, <c>Units.Block(layer)</c>.</summary>
public static class Units
{
    /// <summary>The hidden units between <paramref name="producer"/> and <paramref name="consumer"/>; see <see cref="HiddenUnits"/>.</summary>
    public static HiddenUnits Hidden(Module producer, Module consumer, params Module[] alongside) => new(producer, consumer, alongside);

    /// <summary>Attention heads by key/value group; see <see cref="HeadUnits"/>.</summary>
    public static HeadUnits Heads(Linear query, Linear key, Linear value, Linear output, int headDim) => new(query, key, value, output, headDim);

    /// <summary>A residual block (with <paramref name="alongside"/> in the same unit); see <see cref="BlockUnit"/>.</summary>
    public static BlockUnit Block(Module block, params Module[] alongside) => new(block, alongside, []);
}
