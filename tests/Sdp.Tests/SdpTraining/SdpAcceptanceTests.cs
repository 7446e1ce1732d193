using Sdp.Engine.Autograd;
using Sdp.Engine.Backends;
using Sdp.Engine.Distributed;
using Sdp.Engine.Memory;
using Sdp.Engine.Optim;
using Sdp.Engine.Subnetworks;
using Sdp.Engine;
using Sdp.Models.Subnetworks;
using Sdp.Models.Training;
using Sdp.Tests.Support;
using static Sdp.Tests.SdpTraining.SdpTestSupport;

namespace Sdp.Tests.SdpTraining;

/// <summary>
/// The method reference's acceptance checks (§9) on the SDP trainer: equivalences with DP (A4, A5), backward
/// masking (A6–A8), forward masking's objective (A11), synchronisation and update invariants (A12–A15),
/// schedules and evaluation (A17, A18) and accounting (A19, A20). Plan checks (A1–A3, A16) are in
/// Subnetworks/PlanTests; sliced and shortened forward passes (A9, A10) in Subnetworks/SubnetworkShapeTests.
/// </summary>
[TestFixtureSource(typeof(Backends), nameof(Backends.All))]
public class SdpAcceptanceTests(IBackend backend) : DeviceFixture(backend)
{
    [TearDown]
    public void ClearTape() => Tape.Current.Clear();

    private static List<StepMetrics> Train(Trainer trainer, int steps)
    {
        var metrics = new List<StepMetrics>();
        for (int s = 0; s < steps; s++) metrics.Add(trainer.TrainStep());
        return metrics;
    }

    private static Trainer LlamaTrainer(SdpOptions sdp, SubnetLevel level = SubnetLevel.Block, Func<int, IBatchSource>? data = null, Func<IReadOnlyList<Tensor>, Optimizer>? optimizer = null, TrainerOptions? options = null, SubnetOptions? subnet = null)
        => new(LlamaModel(level, subnet), sdp, optimizer ?? AdamW, data ?? (w => Tokens(w, sdp.Workers)), options ?? Options(4));

    [Test]
    public void A4_coverage_one_reproduces_dp_bit_for_bit(
        [Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        using var dp = LlamaTrainer(Dp(2), level);
        using var sdp = LlamaTrainer(SdpRun(2, level, masking, 1.0), level);
        var a = Train(dp, 3);
        var b = Train(sdp, 3);
        for (int s = 0; s < 3; s++)
        {
            Assert.That(BitConverter.DoubleToInt64Bits(b[s].Loss), Is.EqualTo(BitConverter.DoubleToInt64Bits(a[s].Loss)), $"loss at step {s + 1}");
            Assert.That(BitConverter.DoubleToInt64Bits(b[s].GradNorm), Is.EqualTo(BitConverter.DoubleToInt64Bits(a[s].GradNorm)), $"grad norm at step {s + 1}");
        }
        Assert.That(StateBits(sdp.AssembleDense().Module), Is.EqualTo(StateBits(dp.AssembleDense().Module)));
    }

    [Test]
    public void A5_one_worker_equals_single_worker_training()
    {
        // The single-worker loop written out by hand on its own model: lr = schedule(step), forward, backward,
        // clip the global norm, step, zero the gradients.
        var options = Options(4, clip: 0.05);
        using var trainer = LlamaTrainer(Dp(1), options: options);
        using var model = LlamaModel(SubnetLevel.Block).Build(null);
        using var optimizer = AdamW(model.Module.Parameters());
        var data = Tokens(0, 1);
        var parameters = model.Module.Parameters();
        bool clipped = false;
        for (int s = 0; s < 4; s++)
        {
            optimizer.LearningRate = options.Schedule.LearningRate(s);
            double loss;
            using (TensorScope.Begin())
            {
                var (x, y) = data.NextBatch();
                var l = model.Loss(x, y);
                loss = l.Item();
                l.Backward();
            }
            double norm = GradClip.ClipGlobalNorm(parameters, options.Clip);
            clipped |= norm > options.Clip;
            optimizer.Step();
            optimizer.ZeroGrad();

            var actual = trainer.TrainStep();
            Assert.That(BitConverter.DoubleToInt64Bits(actual.Loss), Is.EqualTo(BitConverter.DoubleToInt64Bits(loss)), $"loss at step {s + 1}");
            Assert.That(BitConverter.DoubleToInt64Bits(actual.GradNorm), Is.EqualTo(BitConverter.DoubleToInt64Bits(norm)), $"grad norm at step {s + 1}");
            Assert.That(actual.Workers.Single().Collectives, Is.Zero, "one worker communicates nothing");
        }
        Assert.That(clipped, Is.True, "clipping was active");
        Assert.That(StateBits(trainer.AssembleDense().Module), Is.EqualTo(StateBits(model.Module)));
        Training.TrainingTestSupport.AssertSameOptimizerState(optimizer, trainer.WorkerOptimizer(0));
    }

    [Test]
    public void A6_backward_masked_workers_see_the_dense_loss([Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level)
    {
        // Every worker gets the same batch; under backward masking each one's loss is the dense model's, bit for bit.
        using var sdp = LlamaTrainer(SdpRun(4, level, Masking.Backward, 0.5), level, _ => SameTokens());
        using var dense = LlamaModel(level).Build(null);
        var (x, y) = SameTokens().NextBatch();
        using var _ = GradMode.Disable();
        double expected;
        using (var loss = dense.Loss(x, y)) expected = loss.Item();
        var step = sdp.TrainStep();
        foreach (var w in step.Workers) Assert.That(BitConverter.DoubleToInt64Bits(w.Loss), Is.EqualTo(BitConverter.DoubleToInt64Bits(expected)), $"worker {w.Worker}");
    }

    [Test]
    public void A7_held_gradients_equal_the_dense_gradients_and_unheld_ones_do_not_exist([Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level)
    {
        var model = LlamaModel(level);
        var plan = SubnetworkPlan.Create(model.Units, 4, 0.5, 5);
        var layout = new WorkerLayout(model.Units, plan, 1);
        var (x, y) = SameTokens().NextBatch();
        using var dense = model.Build(null);
        using (var loss = dense.Loss(x, y)) loss.Backward();
        var account = new MemoryAccount("worker 1");
        using var active = account.Activate();
        using var worker = model.Build(null);
        var trained = SubnetworkTensors.ApplyBackwardMasking(worker.Module, layout);
        AutogradCounters.Reset();
        using (TensorScope.Begin())
        {
            var loss = worker.Loss(x, y);
            loss.Backward();
        }
        var denseParams = dense.Module.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor);
        long gradientBytes = 0;
        foreach (var (name, p) in worker.Module.NamedParameters())
        {
            if (!trained.Contains(p))
            {
                Assert.That(p.Grad, Is.Null, $"{name} is not held and must have no gradient");
                continue;
            }
            Assert.That(p.Grad, Is.Not.Null, name);
            gradientBytes += p.Grad!.ByteLength;
            var full = denseParams[name].Grad!.ToArray<float>();
            var expected = p.Held is { } held ? Gather(full, denseParams[name].Shape, held) : full;
            Assert.That(p.Grad.ToArray<float>(), Is.EqualTo(expected).Within(1e-6f).Percent.Or.EqualTo(expected).Within(1e-7f), name);
        }
        long heldParams = plan.HeldParams(1);
        Assert.That(gradientBytes, Is.EqualTo(4 * heldParams), "gradient bytes = 4 × held parameters");
        Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.EqualTo(4 * heldParams));
        Assert.That(AutogradCounters.WeightGradElements, Is.EqualTo(heldParams), "weight-gradient work exactly for the held parameters");
    }

    private static float[] Gather(float[] full, Shape shape, HeldSlices held)
    {
        int outer = (int)shape.Product(0, held.Axis), size = shape[held.Axis], inner = (int)shape.Product(held.Axis + 1, shape.Rank);
        var result = new float[outer * held.Count * inner];
        for (int o = 0; o < outer; o++)
            for (int k = 0; k < held.Count; k++)
                Array.Copy(full, ((long)o * size + held.Indices[k]) * inner, result, ((long)o * held.Count + k) * inner, inner);
        return result;
    }

    [Test]
    public void A8_same_batch_everywhere_gives_the_dense_gradient([Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level)
    {
        // One SGD step with lr 1 and no clipping moves every parameter by -ĝ; with the same batch on all
        // workers, ĝ must be the dense gradient of that batch for every parameter (unbiasedness check).
        using var sdp = LlamaTrainer(SdpRun(4, level, Masking.Backward, 0.5), level, _ => SameTokens(), p => new Sgd(p, 1.0), Options(1, clip: 0, lr: 1.0));
        using var dense = LlamaModel(level).Build(null);
        var before = SubnetworkTensors.Named(dense.Module).ToDictionary(p => p.Key, p => p.Value.ToArray<float>());
        var (x, y) = SameTokens().NextBatch();
        using (var loss = dense.Loss(x, y)) loss.Backward();
        sdp.TrainStep();
        foreach (var (name, p) in sdp.AssembleDense().Module.NamedParameters())
        {
            var moved = p.ToArray<float>().Zip(before[name], (after, b) => b - after).ToArray();
            var grad = dense.Module.NamedParameters().First(q => q.Name == name).Tensor.Grad!.ToArray<float>();
            Assert.That(moved, Is.EqualTo(grad).Within(2e-5f), name);
        }
    }

    [Test]
    public void A11_A15_forward_masking_follows_the_holder_normalised_gradient_of_the_summed_subnetwork_losses(
        [Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level)
    {
        // ĝ = D⁻¹ ∇ Σ_i f_i(θ): reference from each worker's subnetwork built by hand, then one SGD step with
        // weight decay, which must decay every parameter exactly once (A15).
        const double lr = 0.5, decay = 0.1;
        var model = LlamaModel(level);
        using var sdp = new Trainer(model, SdpRun(4, level, Masking.Forward, 0.5), p => new Sgd(p, lr, weightDecay: decay), w => Tokens(w, 4), Options(1, clip: 0, lr: lr));
        using var dense = model.Build(null);
        var plan = sdp.Plan!;
        var sum = SubnetworkTensors.Named(dense.Module).Where(p => p.Value.RequiresGrad).ToDictionary(p => p.Key, p => new double[p.Value.Numel]);
        var holders = sum.ToDictionary(p => p.Key, p => new int[p.Value.Length]);
        for (int w = 0; w < 4; w++)
        {
            var layout = new WorkerLayout(model.Units, plan, w);
            using var sub = model.Build(layout.HeldUnits);
            SubnetworkTensors.CopyFromDense(dense.Module, sub.Module, layout);
            var (x, y) = Tokens(w, 4).NextBatch();
            using (var loss = sub.Loss(x, y)) loss.Backward();
            foreach (var (name, p) in sub.Module.NamedParameters())
            {
                var full = dense.Module.NamedParameters().First(q => q.Name == name).Tensor;
                var positions = DensePositions(layout, name, full.Shape, p.Shape);
                var g = p.Grad!.ToArray<float>();
                for (int i = 0; i < g.Length; i++)
                {
                    sum[name][positions[i]] += g[i];
                    holders[name][positions[i]]++;
                }
            }
        }
        sdp.TrainStep();
        var assembled = sdp.AssembleDense().Module.NamedParameters().ToDictionary(p => p.Name, p => p.Tensor.ToArray<float>());
        foreach (var (name, p) in dense.Module.NamedParameters())
        {
            var theta = p.ToArray<float>();
            var expected = new float[theta.Length];
            for (int i = 0; i < theta.Length; i++)
            {
                Assert.That(holders[name][i], Is.GreaterThan(0), $"{name}[{i}] has no holder");
                double g = sum[name][i] / holders[name][i];
                expected[i] = (float)(theta[i] - lr * (g + decay * theta[i]));
            }
            Assert.That(assembled[name], Is.EqualTo(expected).Within(2e-6f), name);
        }
    }

    /// <summary>For each element of a worker tensor of <paramref name="workerShape"/>, its flat index in the dense tensor.</summary>
    private static int[] DensePositions(WorkerLayout layout, string name, Shape dense, Shape workerShape)
    {
        var binding = layout.BindingOf(name);
        if (dense == workerShape) return [.. Enumerable.Range(0, (int)dense.Numel)];
        var slices = layout.HeldSliceIndices(binding!);
        int axis = binding!.Axis, outer = (int)dense.Product(0, axis), inner = (int)dense.Product(axis + 1, dense.Rank);
        var positions = new int[workerShape.Numel];
        for (int o = 0; o < outer; o++)
            for (int k = 0; k < slices.Length; k++)
                for (int i = 0; i < inner; i++)
                    positions[((o * slices.Length) + k) * inner + i] = ((o * dense[axis]) + slices[k]) * inner + i;
        return positions;
    }

    [Test]
    public void A12_the_trainer_averages_each_unit_over_its_holders_only()
    {
        // With SGD lr 1 and no decay, a unit's update is minus the mean of its holders' gradients: a unit held
        // by workers {a, b} moves by -(g_a + g_b)/2, never by a W-wide mean. Checked through A11's reference
        // at neuron level too; here the grouped all-reduce itself is compared with the full-length masked
        // reference Σ m_i ⊙ g_i / n on random gradients.
        var model = LlamaModel(SubnetLevel.Neuron);
        var plan = SubnetworkPlan.Create(model.Units, 4, 0.5, 5);
        var comms = InProcessCommunicator.Create(4);
        var workers = Enumerable.Range(0, 4).Select(w => model.Build(new WorkerLayout(model.Units, plan, w).HeldUnits)).ToArray();
        try
        {
            var grads = new Dictionary<(int, string), float[]>();
            var syncs = new HolderGroupedSync[4];
            var holderSets = Enumerable.Range(0, plan.Groups.Count).SelectMany(g => Enumerable.Range(0, plan.Groups[g].UnitCount).Select(u => plan.HoldersOf(g, u))).ToList();
            for (int w = 0; w < 4; w++)
            {
                var layout = new WorkerLayout(model.Units, plan, w);
                var rng = new Rng((ulong)(100 + w));
                foreach (var (name, p) in workers[w].Module.NamedParameters())
                {
                    var g = Enumerable.Range(0, (int)p.Numel).Select(_ => (float)rng.NextNormal()).ToArray();
                    grads[(w, name)] = g;
                    SetGrad(p, g);
                }
                syncs[w] = new HolderGroupedSync([.. workers[w].Module.NamedParameters().Select(p => layout.SyncEntry(p.Name, p.Tensor, SyncTarget.Gradient)!)], new HolderGroups(comms[w], holderSets));
            }
            Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, w => syncs[w].Synchronize());
            for (int w = 0; w < 4; w++)
            {
                var layout = new WorkerLayout(model.Units, plan, w);
                foreach (var (name, p) in workers[w].Module.NamedParameters())
                {
                    var binding = layout.BindingOf(name);
                    var actual = p.Grad!.ToArray<float>();
                    var expected = new float[actual.Length];
                    // Reference: for every element, the sum over the workers holding it of their gradient, over their count.
                    for (int v = 0; v < 4; v++)
                    {
                        var other = new WorkerLayout(model.Units, plan, v);
                        if (binding is not null && binding.Unit is null)
                        {
                            var mine = layout.HeldSliceIndices(binding);
                            var theirs = other.HeldSliceIndices(binding);
                            int inner = (int)(p.Numel / (p.Shape[binding.Axis] * p.Shape.Product(0, binding.Axis)));
                            int outer = (int)p.Shape.Product(0, binding.Axis);
                            for (int o = 0; o < outer; o++)
                                for (int k = 0; k < mine.Length; k++)
                                {
                                    int at = Array.IndexOf(theirs, mine[k]);
                                    if (at < 0) continue;
                                    for (int i = 0; i < inner; i++)
                                        expected[(o * mine.Length + k) * inner + i] += grads[(v, name)][(o * theirs.Length + at) * inner + i];
                                }
                        }
                        else
                        {
                            for (int i = 0; i < expected.Length; i++) expected[i] += grads[(v, name)][i];
                        }
                    }
                    float n = binding is null ? 4 : plan.HoldersPerUnit;
                    for (int i = 0; i < expected.Length; i++) expected[i] /= n;
                    Assert.That(actual, Is.EqualTo(expected).Within(1e-6f), $"worker {w} {name}");
                }
            }
        }
        finally
        {
            foreach (var w in workers) w.Dispose();
        }
    }

    private static void SetGrad(Tensor p, float[] values)
    {
        p.ZeroGrad();
        using var g = Tensor.FromArray(values, p.Shape);
        using var sum = Ops.Sum(Ops.Mul(p, g));
        sum.Backward();
    }

    [Test]
    public void A13_A18_holders_keep_identical_weights_and_optimizer_state_and_any_holder_assembles_the_same_model(
        [Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        using var sdp = LlamaTrainer(SdpRun(4, level, masking, 0.5), level);
        Train(sdp, 3);
        var plan = sdp.Plan!;
        var dense = SubnetworkTensors.Named(sdp.AssembleDense().Module).ToDictionary(p => p.Key, p => p.Value.ToArray<float>());
        for (int w = 0; w < 4; w++)
        {
            var layout = sdp.WorkerLayout(w)!;
            var optimizer = sdp.WorkerOptimizer(w);
            var stateOf = new Dictionary<Tensor, IReadOnlyDictionary<string, Tensor>>(ReferenceEqualityComparer.Instance);
            for (int i = 0; i < optimizer.Parameters.Count; i++) stateOf[optimizer.Parameters[i]] = optimizer.State(i);
            foreach (var (name, p) in sdp.WorkerModel(w).Module.NamedParameters())
            {
                var values = p.ToArray<float>();
                var positions = DensePositions(layout, name, DenseShape(sdp, name), p.Shape);
                // Under backward masking a worker holds every unit's weights (refreshed from their holders);
                // under forward masking only its own. Either way they equal the assembled model's.
                for (int i = 0; i < values.Length; i++)
                    Assert.That(BitConverter.SingleToInt32Bits(values[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(dense[name][positions[i]])), $"worker {w} {name}[{i}]");
                if (!stateOf.TryGetValue(p, out var state)) continue;
                Assert.That(state, Is.Not.Empty, $"worker {w} {name} has optimizer state");
                foreach (var (stateName, t) in state) Assert.That(t.Shape, Is.EqualTo(p.GradShape), $"{name}.{stateName}");
            }
        }
        // Optimizer state of a unit is bit-identical across its holders: compare every pair of holders on one unit.
        AssertHoldersAgreeOnState(sdp, plan);
    }

    private static Shape DenseShape(Trainer sdp, string name) => SubnetworkTensors.Named(sdp.AssembleDense().Module)[name].Shape;

    private static void AssertHoldersAgreeOnState(Trainer sdp, SubnetworkPlan plan)
    {
        // Checksums per (tensor, dense slice) of the exp_avg state, gathered from every holder.
        var seen = new Dictionary<(string, int), long>();
        for (int w = 0; w < plan.Workers; w++)
        {
            var layout = sdp.WorkerLayout(w)!;
            var optimizer = sdp.WorkerOptimizer(w);
            var names = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
            foreach (var (n, t) in sdp.WorkerModel(w).Module.NamedParameters()) names[t] = n;
            for (int i = 0; i < optimizer.Parameters.Count; i++)
            {
                var p = optimizer.Parameters[i];
                string name = names[p];
                var binding = layout.BindingOf(name);
                var m = optimizer.State(i)["exp_avg"];
                int[] slices = binding is { Unit: null } ? layout.HeldSliceIndices(binding) : [-1];
                int axis = binding?.Axis ?? 0;
                var shape = m.Shape;
                int outer = binding is { Unit: null } ? (int)shape.Product(0, axis) : 1, inner = binding is { Unit: null } ? (int)shape.Product(axis + 1, shape.Rank) : (int)m.Numel;
                var bits = TrainingBits(m);
                for (int k = 0; k < slices.Length; k++)
                {
                    long checksum = 17;
                    for (int o = 0; o < outer; o++)
                        for (int e = 0; e < inner; e++)
                            checksum = checksum * 31 + bits[(o * slices.Length + k) * inner + e];
                    if (seen.TryGetValue((name, slices[k]), out long other)) Assert.That(checksum, Is.EqualTo(other), $"exp_avg of {name} slice {slices[k]} differs between holders");
                    else seen[(name, slices[k])] = checksum;
                }
            }
        }
        Assert.That(seen, Is.Not.Empty);
    }

    private static long[] TrainingBits(Tensor t) => Training.TrainingTestSupport.Bits(t);

    [Test]
    public void A14_the_reported_norm_is_the_norm_of_the_assembled_gradient()
    {
        // SGD lr 1 without clipping: the assembled update is -ĝ, whose norm must be the reported one.
        using var sdp = LlamaTrainer(SdpRun(4, SubnetLevel.Neuron, Masking.Forward, 0.5), SubnetLevel.Neuron, optimizer: p => new Sgd(p, 1.0), options: Options(1, clip: 0, lr: 1.0));
        var before = SubnetworkTensors.Named(sdp.AssembleDense().Module).Where(p => p.Value.RequiresGrad).ToDictionary(p => p.Key, p => p.Value.ToArray<float>());
        var step = sdp.TrainStep();
        double sumSq = 0;
        foreach (var (name, p) in sdp.AssembleDense().Module.NamedParameters())
        {
            var after = p.ToArray<float>();
            for (int i = 0; i < after.Length; i++) sumSq += Math.Pow((double)before[name][i] - after[i], 2);
        }
        Assert.That(step.GradNorm, Is.EqualTo(Math.Sqrt(sumSq)).Within(1e-4).Percent);
        Assert.That(step.Workers.Select(w => w.Loss).Distinct().Count(), Is.GreaterThan(1), "workers trained on different data");
    }

    [Test]
    public void A17_flop_matched_runs_steps_over_coverage_and_same_steps_leaves_them()
    {
        Assert.That(SdpOptions.MatchedSteps(200, 0.5, ScheduleMatch.FlopMatched), Is.EqualTo(400));
        Assert.That(SdpOptions.MatchedSteps(200, 0.75, ScheduleMatch.FlopMatched), Is.EqualTo(267));
        Assert.That(SdpOptions.MatchedSteps(200, 0.25, ScheduleMatch.SameSteps), Is.EqualTo(200));
    }

    [Test]
    public void A18_batchnorm_statistics_are_averaged_among_holders_and_evaluation_uses_the_dense_model(
        [Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        var model = ResNetModel(level);
        using var sdp = new Trainer(model, SdpRun(4, level, masking, 0.5), AdamW, w => Images(w, 4), Options(2));
        Train(sdp, 2);
        var dense = SubnetworkTensors.Named(sdp.AssembleDense().Module);
        for (int w = 0; w < 4; w++)
        {
            var layout = sdp.WorkerLayout(w)!;
            foreach (var (name, b) in sdp.WorkerModel(w).Module.NamedBuffers().Where(b => b.Tensor.DType.IsFloatingPoint()))
            {
                var positions = DensePositions(layout, name, dense[name].Shape, b.Shape);
                var values = b.ToArray<float>();
                var expected = dense[name].ToArray<float>();
                for (int i = 0; i < values.Length; i++)
                    Assert.That(BitConverter.SingleToInt32Bits(values[i]), Is.EqualTo(BitConverter.SingleToInt32Bits(expected[positions[i]])), $"worker {w} {name}[{i}]");
            }
        }
        var eval = sdp.Evaluate(Images(0, 1), 2);
        Assert.That(eval.Count, Is.EqualTo(8));
        Assert.That(double.IsFinite(eval.MeanLoss), Is.True);
    }

    [Test]
    public void A18_dp_evaluates_worker_0s_model_in_place_and_batchnorm_recalibration_leaves_training_alone()
    {
        // DP keeps no second dense model: worker 0's is it. Evaluating it with BatchNorm recalibration must not
        // change what the workers train on, so the run continues exactly as one that never evaluated.
        var recalibration = new BatchNormRecalibration(Images(0, 1), 2);
        using var evaluated = new Trainer(ResNetModel(SubnetLevel.Block), Dp(2), AdamW, w => Images(w, 2), Options(3) with { BnRecalibration = recalibration });
        using var plain = new Trainer(ResNetModel(SubnetLevel.Block), Dp(2), AdamW, w => Images(w, 2), Options(3));
        Train(evaluated, 2);
        Train(plain, 2);
        Assert.That(evaluated.AssembleDense(), Is.SameAs(evaluated.WorkerModel(0)));
        Assert.That(evaluated.HostAccount, Is.Null);
        var before = StateBits(evaluated.WorkerModel(0).Module);
        var recalibrated = evaluated.Evaluate(Images(0, 1), 2);
        Assert.That(StateBits(evaluated.WorkerModel(0).Module), Is.EqualTo(before), "weights and BatchNorm statistics put back");
        Assert.That(evaluated.WorkerModel(0).Module.IsTraining, Is.True, "training mode put back");
        Assert.That(recalibrated.MeanLoss, Is.Not.EqualTo(plain.Evaluate(Images(0, 1), 2).MeanLoss), "recalibration changed the statistics evaluated with");
        Train(evaluated, 1);
        Train(plain, 1);
        for (int w = 0; w < 2; w++) Assert.That(StateBits(evaluated.WorkerModel(w).Module), Is.EqualTo(StateBits(plain.WorkerModel(w).Module)), $"worker {w}");
    }

    [Test]
    public void A19_worker_memory_is_the_held_parameters_times_bytes_per_parameter([Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        using var sdp = LlamaTrainer(SdpRun(4, SubnetLevel.Block, masking, 0.5));
        // The syncs' staging buffers live from construction to disposal, as engine buffers.
        var staging = Enumerable.Range(0, 4).Select(w => sdp.WorkerAccount(w).CurrentBytes(MemoryCategory.EngineBuffers)).ToArray();
        Train(sdp, 1);
        var plan = sdp.Plan!;
        for (int w = 0; w < 4; w++)
        {
            var account = sdp.WorkerAccount(w);
            long held = plan.HeldParams(w);
            long weights = masking == Masking.Forward ? held : plan.TotalParams;
            Assert.That(account.CurrentBytes(MemoryCategory.Parameters), Is.EqualTo(4 * weights), $"worker {w} parameters");
            Assert.That(account.CurrentBytes(MemoryCategory.OptimizerState), Is.EqualTo(8 * held), $"worker {w} AdamW state");
            Assert.That(account.PeakBytes(MemoryCategory.Gradients), Is.EqualTo(4 * held), $"worker {w} gradients");
            Assert.That(account.CurrentBytes(MemoryCategory.Gradients), Is.Zero, "gradients are dropped after the step");
            Assert.That(staging[w], Is.Positive, $"worker {w} staging buffers");
            Assert.That(account.CurrentBytes(MemoryCategory.EngineBuffers), Is.EqualTo(staging[w]), "a step adds no engine buffer");
            Assert.That(account.CurrentBytes(MemoryCategory.Activations) + account.CurrentBytes(MemoryCategory.Workspace), Is.Zero, "nothing transient survives a step");
        }
    }

    [Test]
    public void A20_communication_per_step_follows_the_ring_formulas([Values(SubnetLevel.Neuron, SubnetLevel.Block)] SubnetLevel level, [Values(Masking.Forward, Masking.Backward)] Masking masking)
    {
        using var sdp = LlamaTrainer(SdpRun(4, level, masking, 0.5), level);
        var step = sdp.TrainStep();
        var plan = sdp.Plan!;
        int w = 4, k = plan.HoldersPerUnit;
        long shared = plan.SharedParams, units = plan.TotalParams - plan.SharedParams;
        for (int r = 0; r < w; r++)
        {
            var (collectives, bytes) = sdp.GradientSyncCost(r);
            long heldUnits = plan.HeldParams(r) - shared;
            double formula = 4 * (2.0 * (w - 1) / w * shared + 2.0 * (k - 1) / k * heldUnits);
            Assert.That(bytes, Is.EqualTo(formula).Within(5).Percent, $"worker {r} gradient bytes");
            int sets = Enumerable.Range(0, plan.Groups.Count).SelectMany(g => Enumerable.Range(0, plan.Groups[g].UnitCount).Select(u => plan.HoldersOf(g, u)))
                .Where(h => h.Contains(r)).Select(h => string.Join(",", h)).Distinct().Count();
            Assert.That(collectives, Is.EqualTo(1 + sets), $"worker {r}: one shared bucket plus one per holder set");
            // The step adds the norm's scalar all-reduce, and under backward masking one refresh broadcast per holder set.
            int refresh = masking == Masking.Backward ? plan.DistinctHolderGroups : 0;
            if (masking == Masking.Backward)
                Assert.That(sdp.RefreshElementsReceived(r), Is.EqualTo(plan.TotalParams - plan.HeldParams(r)), $"worker {r} receives exactly the parameters it does not hold");
            Assert.That(step.Workers[r].Collectives, Is.EqualTo(collectives + 1 + refresh), $"worker {r} collectives in the step");
        }
        Assert.That(plan.DistinctHolderGroups, Is.LessThanOrEqualTo(w * (level == SubnetLevel.Neuron ? 1 : 6)));
    }
}
