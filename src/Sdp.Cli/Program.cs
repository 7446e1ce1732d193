using Sdp.Cli;

return SdpCli.Run(args);
