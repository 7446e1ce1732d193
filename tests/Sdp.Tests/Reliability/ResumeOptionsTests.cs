using Sdp.Models.Checkpoints;
using Sdp.Tests.Cli;

namespace Sdp.Tests.Reliability;

/// <summary>
/// `sdp train ... --resume DIR`: the command that saved DIR, run again with --resume added, continues it (options that
/// match the checkpoint are accepted, --config included); an option given with another value than the checkpoint's is
/// a usage error naming the option, its value and the checkpoint's; --keep-last K keeps DIR and K - 1 DIR.step-N.
/// </summary>
[NonParallelizable]
public sealed class ResumeOptionsTests : CliTestBase
{
    private const string Saved = "--config tiny --batch 2 --seq 8 --lr 0.004 --optimizer sgd --momentum 0.8 --schedule constant --warmup 0 --save ck";

    [Test]
    public void The_same_command_with_resume_added_continues_the_run()
    {
        var first = Train($"{Saved} --steps 2");
        Assert.That(first.ExitCode, Is.Zero, first.ToString());
        var again = Train($"{Saved} --steps 4 --resume ck");
        Assert.That(again.ExitCode, Is.Zero, again.ToString());
        Assert.That(again.Out, Does.Contain("resumed from ck at step 2"));
        Assert.That(SdpCheckpoint.ReadInfo("ck").Step, Is.EqualTo(4));
    }

    [TestCase("--batch 3", "--batch 3", "2")]
    [TestCase("--lr 0.01", "--lr 0.01", "0.004")]
    [TestCase("--optimizer adamw", "--optimizer adamw", "\"sgd\"")]
    [TestCase("--momentum 0.9", "--momentum 0.9", "0.8")]
    [TestCase("--config 130m", "--config 130m", "hidden_size 768, the checkpoint's 256")]
    public void A_conflicting_option_is_a_usage_error_naming_both_values(string option, string given, string saved)
    {
        var first = Train($"{Saved} --steps 2");
        Assert.That(first.ExitCode, Is.Zero, first.ToString());
        var before = Listing();
        AssertUsageError(Train($"{Replaced(option)} --steps 4 --resume ck"), before, "--resume", "ck", given, saved);
    }

    /// <summary><see cref="Saved"/> with the value of the one option in <paramref name="option"/> ("--batch 3") replaced.</summary>
    private static string Replaced(string option)
    {
        var words = Args(Saved);
        var (name, value) = (option.Split(' ')[0], option.Split(' ')[1]);
        words[Array.IndexOf(words, name) + 1] = value;
        return string.Join(' ', words);
    }

    [Test]
    public void Keep_last_keeps_the_latest_and_the_ones_before_it()
    {
        var run = Train("--steps 5 --warmup 0 --save ck --save-every 1 --keep-last 3");
        Assert.That(run.ExitCode, Is.Zero, run.ToString());
        Assert.That(Directory.GetFileSystemEntries(Dir).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "ck", "ck.step-000003", "ck.step-000004" }));
        Assert.That(SdpCheckpoint.ReadInfo("ck").Step, Is.EqualTo(5));
        Assert.That(SdpCheckpoint.ReadInfo("ck.step-000003").Step, Is.EqualTo(3));
        // An earlier checkpoint resumes like the latest.
        var resumed = Train("--steps 5 --warmup 0 --resume ck.step-000003 --save ck2");
        Assert.That(resumed.ExitCode, Is.Zero, resumed.ToString());
        Assert.That(File.ReadAllBytes("ck2/model.safetensors"), Is.EqualTo(File.ReadAllBytes("ck/model.safetensors")));

        var before = Listing();
        AssertUsageError(Train("--steps 2 --keep-last 2 --save w.safetensors"), before, "--keep-last", "--save DIR");
    }
}
