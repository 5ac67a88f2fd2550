# The SYNOPSIS of PAGI::Server::Native is a complete server: extract it from
# the POD, run it as it is (PORT=0), and talk to it over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use IO::Select;
use IO::Socket::IP;
use File::Temp ();
use POSIX ();
use Time::HiRes qw(time sleep);

my $root = "$FindBin::Bin/..";
my $child;
END {
    # Never leave the synopsis server running.
    if ($child) { kill 'KILL', $child; waitpid $child, 0 }
}

sub synopsis_code {
    open my $fh, '<', "$root/lib/PAGI/Server/Native.pm" or die "open: $!";
    my ($in, @code);
    while (my $line = <$fh>) {
        if ($line =~ /^=head1\s+SYNOPSIS/) { $in = 1; next }
        last if $in && $line =~ /^=head1/;
        push @code, $line if $in && $line =~ s/^    //;
    }
    return join '', @code;
}

sub read_line_with_timeout {
    my ($fh, $timeout) = @_;
    my $sel = IO::Select->new($fh);
    my $deadline = time + $timeout;
    my $buf = '';
    while ($buf !~ /\n/) {
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        sysread($fh, $buf, 1, length $buf) or return undef;
    }
    return $buf;
}

sub get {
    my ($port, $path) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5)
        or return "connect: $@";
    print {$sock} "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    my $sel = IO::Select->new($sock);
    my $deadline = time + 5;
    my $buf = '';
    while ((my $left = $deadline - time) > 0) {
        last unless $sel->can_read($left);
        sysread($sock, $buf, 65536, length $buf) or last;
    }
    return $buf;
}

my $code = synopsis_code();
subtest 'the SYNOPSIS is extracted whole' => sub {
    like($code, qr/\Ause strict;/, 'from its first line');
    like($code, qr/PAGI::Server::Native->new/, 'including the engine');
    like($code, qr/\$loop->run;\s*\z/, 'up to its last line');
};

my $script = File::Temp->new(SUFFIX => '.pl');
print {$script} $code;
close $script;

my $out;
{
    local $ENV{PORT} = 0;
    $child = open($out, '-|', $^X, '-I', "$root/lib", '-I', "$root/blib/lib", '-I', "$root/blib/arch",
        $script->filename) or die "cannot run the SYNOPSIS: $!";
}

my $port;
subtest 'it starts and reports its port' => sub {
    my $line = read_line_with_timeout($out, 10);
    ($port) = ($line // '') =~ /\Alistening on port (\d+)\n\z/;
    ok($port, 'it prints "listening on port N"') or diag("got: " . ($line // 'nothing'));
    cmp_ok($port // 0, '!=', 5000, 'PORT=0 was honoured (not the default 5000)');
};

subtest 'it answers GET with "Hello from PATH"' => sub {
    plan skip_all => 'the SYNOPSIS did not start' unless $port;
    for my $path ('/some/path', '/another%20one?q=1') {
        my ($res) = parse_responses(get($port, $path));
        (my $decoded = $path) =~ s/\?.*//;
        $decoded =~ s/%20/ /g;
        is($res && $res->{status}, 200, "GET $path: status 200");
        is($res && $res->{header}{'content-type'}, 'text/plain', "GET $path: content-type");
        is($res && $res->{body}, "Hello from $decoded\n", "GET $path: body names the decoded path");
    }
};

subtest 'SIGTERM ends it' => sub {
    # TERM, then KILL if it lingers; the SYNOPSIS has no handler, so TERM ends it.
    kill 'TERM', $child;
    my $reaped;
    for (1 .. 40) {
        if (waitpid($child, POSIX::WNOHANG()) == $child) { $reaped = 1; last }
        sleep 0.05;
    }
    unless ($reaped) { kill 'KILL', $child; waitpid $child, 0 }
    ok($reaped, 'the SYNOPSIS server ended within 2 s of SIGTERM');
    undef $child;
    close $out;
};

done_testing;
