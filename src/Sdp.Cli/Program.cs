System.Console.WriteLine("sdp");
