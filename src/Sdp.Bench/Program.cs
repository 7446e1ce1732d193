System.Console.WriteLine("Sdp.Bench");
