use strict;
use warnings;
use Test::More;
use FindBin;
use File::Spec;
use File::Temp qw(tempdir);
use IO::Socket::IP;
use IO::Select;
use JSON::PP;
use POSIX ();
use Time::HiRes qw(time sleep);

# PAGI::App::ToPSGI under real PSGI servers, started by this test as child
# processes on free loopback ports: Starman (prefork, one worker) and
# plackup's HTTP::Server::PSGI. Both are blocking servers, so the adapter
# must drive the app's IO::Async timers itself.

alarm 240;

my $lib = File::Spec->rel2abs("$FindBin::Bin/../lib");
my $dir = tempdir(CLEANUP => 1);
my $CI = ($ENV{CI} // '') eq 'true';

# The PAGI app, shared by both servers. Marks go to files in $dir, since
# the app runs in the server's process.
my $app_file = "$dir/app.psgi";
open my $fh, '>', $app_file or die "$app_file: $!";
print $fh <<'APP';
use strict;
use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;
use Encode ();
use JSON::PP;
use Time::HiRes ();
use PAGI::App::ToPSGI;

my $dir = $ENV{TOPSGI_TEST_DIR};
sub mark {
    my ($file, $line) = @_;
    open my $fh, '>>', "$dir/$file" or die "$dir/$file: $!";
    print $fh "$line\n";
    close $fh;
}
sub start { { type => 'http.response.start', status => shift, headers => [ @_ ] } }
sub body  { { type => 'http.response.body', body => $_[0], more => $_[1] ? 1 : 0 } }

my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'lifespan') {
        await $receive->();
        $scope->{state}{pool} = { pid => $$ };
        await $send->({ type => 'lifespan.startup.complete' });
        my $ev = await $receive->();
        mark('lifespan', "$ev->{type} $$");
        await $send->({ type => 'lifespan.shutdown.complete' });
        return;
    }
    die "unsupported scope '$scope->{type}'\n" unless $scope->{type} eq 'http';
    my $path = $scope->{path};
    my ($id) = $scope->{query_string} =~ /id=(\w+)/;

    if ($path =~ m{\A/scope}) {
        my %copy = map { $_ => $scope->{$_} }
            qw(type pagi http_version method scheme raw_path root_path query_string headers client server state);
        $copy{path} = Encode::encode('UTF-8', $path);
        $copy{connection} = ref $scope->{'pagi.connection'};
        $copy{first_event} = await $receive->();
        my $json = JSON::PP->new->canonical->encode(\%copy);
        await $send->(start(201, [ 'content-type', 'application/json' ], [ 'x-custom', 'yes' ],
                            [ 'content-length', length $json ]));
        await $send->(body($json));
    }
    elsif ($path eq '/echo') {
        my ($body, @more) = ('');
        while (1) {
            my $ev = await $receive->();
            die "unexpected $ev->{type}" unless $ev->{type} eq 'http.request';
            $body .= $ev->{body};
            push @more, $ev->{more};
            last unless $ev->{more};
        }
        await $send->(start(200, [ 'x-events', join(',', @more) ]));
        await $send->(body($body, 0));
    }
    elsif ($path eq '/stream') {
        await $send->(start(200, [ 'content-type', 'text/plain' ]));
        await $send->(body("first\n", 1));
        # A timer on the IO::Async loop: the blocking server only gets
        # past it because the adapter runs the loop.
        await IO::Async::Loop->new->delay_future(after => 1);
        await $send->(body(sprintf("second sent at %.6f\n", Time::HiRes::time()), 0));
        my $ev = await $receive->();
        mark("after-$id", $ev->{type});
    }
    elsif ($path eq '/die-before') {
        die "exploded before the response\n";
    }
    elsif ($path eq '/die-after-start') {
        await $send->(start(200));
        die "exploded after the start\n";
    }
    elsif ($path eq '/bad-event') {
        my @errors;
        for my $bad (start('x'), start(200, [ 'x-bad', "a\r\nInjected: 1" ]), { type => 'http.nonsense' }) {
            my $f = $send->($bad);
            push @errors, $f->failure if $f->is_failed;
        }
        my $msg = join '', @errors;
        await $send->(start(200));
        await $send->(body($msg));
    }
    elsif ($path eq '/file') {
        await $send->(start(200));
        await $send->({ type => 'http.response.body', file => "$dir/data.bin", offset => 2, length => 5 });
    }
    else {
        await $send->(start(404));
        await $send->(body("no\n"));
    }
};

PAGI::App::ToPSGI->new(app => $app, chunk_size => 4096)->to_app;
APP
close $fh;
{
    open my $data, '>', "$dir/data.bin" or die $!;
    print $data '0123456789';
}

sub free_port {
    my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1, ReuseAddr => 1)
        or die "bind: $@";
    return $s->sockport;
}

sub wait_for {
    my ($what, $timeout, $cond) = @_;
    my $deadline = time + $timeout;
    while (time < $deadline) {
        return 1 if $cond->();
        sleep 0.1;
    }
    diag "timed out waiting for $what";
    return 0;
}

# Starts a server command (its stdout and stderr go to a log) and waits
# until the port accepts connections. Returns the pid.
sub start_server {
    my ($name, $port, @cmd) = @_;
    my $log = "$dir/$name.log";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>>', $log or POSIX::_exit(1);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(1);
        $ENV{PERL5LIB} = join ':', $lib, $ENV{PERL5LIB} // ();
        $ENV{TOPSGI_TEST_DIR} = $dir;
        exec @cmd or POSIX::_exit(127);
    }
    my $up = wait_for("$name to listen on $port", 30, sub {
        return 0 if waitpid($pid, POSIX::WNOHANG()) == $pid;
        IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM()) ? 1 : 0;
    });
    if (!$up) {
        diag "server log:\n" . slurp($log);
        stop_server($pid);
        return;
    }
    return $pid;
}

sub stop_server {
    my ($pid) = @_;
    kill 'TERM', $pid;
    my $gone = wait_for("pid $pid to exit", 20, sub { waitpid($pid, POSIX::WNOHANG()) == $pid });
    if (!$gone) {
        kill 'KILL', $pid;
        waitpid $pid, 0;
    }
    return $gone;
}

sub slurp {
    my ($file) = @_;
    open my $in, '<', $file or return '';
    local $/;
    return scalar <$in>;
}

# One request on its own connection (Connection: close). Returns the status,
# lower-cased headers, de-chunked body and [arrival time, bytes] of each read.
sub request {
    my ($port, $method, $target, %o) = @_;
    my $sock = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Type => Socket::SOCK_STREAM())
        or die "connect $port: $@";
    my $body = $o{body} // '';
    my $head = "$method $target HTTP/1.1\r\nHost: 127.0.0.1:$port\r\nConnection: close\r\n";
    $head .= "$_\r\n" for @{ $o{headers} // [] };
    $head .= 'Content-Length: ' . length($body) . "\r\n" if length $body;
    syswrite $sock, "$head\r\n$body";
    my ($raw, @reads) = ('');
    my $sel = IO::Select->new($sock);
    my $deadline = time + ($o{timeout} // 20);
    while (time < $deadline) {
        next unless $sel->can_read(0.2);
        my $n = sysread $sock, my $buf, 65536;
        last unless $n;
        push @reads, [ time, $buf ];
        $raw .= $buf;
    }
    my ($status_line, @lines) = split /\r\n/, substr($raw, 0, index($raw, "\r\n\r\n"));
    my %h;
    for (@lines) { my ($k, $v) = /\A([^:]+):\s*(.*)\z/; push @{ $h{lc $k} }, $v }
    my $payload = substr($raw, index($raw, "\r\n\r\n") + 4);
    if (($h{'transfer-encoding'}[0] // '') =~ /chunked/i) {
        my $out = '';
        while ($payload =~ s/\A([0-9a-fA-F]+)\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr($payload, 0, $len, '');
            $payload =~ s/\A\r\n//;
        }
        $payload = $out;
    }
    my ($status) = ($status_line // '') =~ /\AHTTP\/\d\.\d (\d{3})/;
    return { status => $status // 0, headers => \%h, body => $payload, reads => \@reads, raw => $raw };
}

sub exercise {
    my ($name, $port, %o) = @_;

    # A server that accepts but cannot load the app answers nothing useful:
    # stop here rather than wait out every request's deadline.
    my $probe = request($port, 'GET', '/nowhere', timeout => 15);
    is $probe->{status}, 404, "$name answers with the app's own 404"
        or return diag "server log:\n" . slurp("$dir/$name.log");

    subtest "$name: GET, the scope from %env, status and headers" => sub {
        my $r = request($port, 'GET', '/scope/caf%C3%A9?a=1&b=%20',
                        headers => [ 'X-Thing: one', 'Cookie: a=1; b=2' ]);
        is $r->{status}, 201, 'the status the app sent';
        is $r->{headers}{'x-custom'}[0], 'yes', 'an app header';
        my $s = eval { decode_json($r->{body}) } or return fail("JSON body: $r->{raw}");
        is $s->{type}, 'http', 'type';
        is_deeply $s->{pagi}, { version => '0.3', spec_version => '0.3' }, 'pagi versions';
        is $s->{http_version}, $o{http_version}, 'http_version from SERVER_PROTOCOL';
        is $s->{method}, 'GET', 'method';
        is $s->{scheme}, 'http', 'scheme';
        is $s->{path}, "/scope/caf\x{E9}", 'path: percent-decoded, UTF-8 characters';
        is $s->{raw_path}, '/scope/caf%C3%A9', 'raw_path from REQUEST_URI, still encoded, no query';
        is $s->{root_path}, '', 'root_path is SCRIPT_NAME';
        is $s->{query_string}, 'a=1&b=%20', 'query_string';
        my %h = map { $_->[0] => $_->[1] } @{ $s->{headers} };
        is $h{'x-thing'}, 'one', 'request header, lower-cased name';
        is $h{cookie}, 'a=1; b=2', 'cookie header';
        is $h{host}, "127.0.0.1:$port", 'host header';
        ok !(grep { $_->[0] =~ /[A-Z_]/ } @{ $s->{headers} }), 'all names lower-case with hyphens';
        is $s->{client}[0], '127.0.0.1', 'client address';
        like $s->{client}[1], qr/\A\d+\z/, 'client port';
        is $s->{server}[1], $port, 'server port';
        ok $s->{state}{pool}{pid}, 'lifespan state is in the scope';
        is $s->{connection}, 'PAGI::App::ToPSGI::Request', 'pagi.connection is set';
        is_deeply $s->{first_event}, { type => 'http.request', body => '', more => 0 },
            'a request without a body: one empty http.request';
    };

    subtest "$name: a POST body through \$receive in chunks" => sub {
        my $payload = join '', map { chr(65 + $_ % 26) x 100 } 0 .. 199;    # 20000 bytes
        my $r = request($port, 'POST', '/echo', body => $payload);
        is $r->{status}, 200, 'status';
        is length($r->{body}), 20000, 'the whole body came back';
        ok $r->{body} eq $payload, 'byte for byte';
        is $r->{headers}{'x-events'}[0], '1,1,1,1,0', 'five http.request events of 4096 bytes at most, the last more => 0';
    };

    subtest "$name: a streamed response arrives as written" => sub {
        my $id = "s$port";
        my $r = request($port, 'GET', "/stream?id=$id");
        is $r->{status}, 200, 'status';
        like $r->{body}, qr/\Afirst\nsecond sent at [\d.]+\n\z/, 'both chunks';
        my ($sent) = $r->{body} =~ /second sent at ([\d.]+)/;
        my ($first) = grep { $_->[1] =~ /first/ } @{ $r->{reads} };
        ok $first, 'the first chunk was read';
        ok $first && $first->[0] < $sent,
            sprintf('the first chunk arrived (%.3f) before the app sent the second (%.3f)', $first->[0], $sent // 0);
        ok wait_for('the disconnect mark', 10, sub { -s "$dir/after-$id" }), 'the app awaited $receive after the response';
        is slurp("$dir/after-$id"), "http.disconnect\n", 'and got http.disconnect';
    };

    subtest "$name: exceptions become a 500" => sub {
        for my $path ('/die-before', '/die-after-start') {
            my $r = request($port, 'GET', $path);
            is $r->{status}, 500, "$path: 500";
            is $r->{body}, "Internal Server Error\n", "$path: a short text body";
        }
        ok wait_for('the error in the log', 10, sub { slurp("$dir/$name.log") =~ /exploded after the start/ }),
            'the error went to psgi.errors';
    };

    subtest "$name: bad events fail their \$send naming the field" => sub {
        my $r = request($port, 'GET', '/bad-event');
        is $r->{status}, 200, 'the app went on after the failed sends';
        like $r->{body}, qr/http\.response\.start: 'status' must be an integer/, 'status type';
        like $r->{body}, qr/'headers' entry 0: Invalid header value: contains CR, LF, or null byte/,
            'header injection refused';
        like $r->{body}, qr/Unrecognized event type 'http\.nonsense' for http protocol/, 'unknown type';
        ok !exists $r->{headers}{injected}, 'nothing injected on the wire';
    };

    subtest "$name: a file body with offset and length" => sub {
        my $r = request($port, 'GET', '/file');
        is $r->{body}, '23456', 'bytes 2..6 of the file';
    };
}

sub need {
    my ($what, $ok) = @_;
    return 1 if $ok;
    fail("$what is required under CI=true") if $CI;
    return 0;
}

subtest 'Starman' => sub {
    chomp(my $starman = `command -v starman 2>/dev/null` // '');
    need('starman (Debian package starman)', $starman && -x $starman)
        or return plan skip_all => 'starman is not installed';
    my $port = free_port();
    my $pid = start_server('starman', $port, $starman, '--workers', 1, '--listen', "127.0.0.1:$port", $app_file)
        or return fail('starman started');
    exercise('starman', $port, http_version => '1.1');
    ok stop_server($pid), 'starman stopped on SIGTERM';
    like slurp("$dir/lifespan"), qr/\Alifespan\.shutdown \d+\n\z/, 'the worker ran lifespan.shutdown at exit';
};

subtest 'plackup (HTTP::Server::PSGI)' => sub {
    chomp(my $plackup = `command -v plackup 2>/dev/null` // '');
    need('plackup (Debian package libplack-perl)', $plackup && -x $plackup)
        or return plan skip_all => 'plackup is not installed';
    unlink "$dir/lifespan";
    my $port = free_port();
    my $pid = start_server('plackup', $port, $plackup, '-s', 'HTTP::Server::PSGI',
                           '--host', '127.0.0.1', '--port', $port, $app_file)
        or return fail('plackup started');
    exercise('plackup', $port, http_version => '1.1');
    ok stop_server($pid), 'plackup stopped';
};

# Servers without psgi.streaming (none of the installed ones): the adapter
# is called directly with such an %env and must return the whole response.
subtest 'no psgi.streaming: a buffered response, the loop still driven' => sub {
    require PAGI::App::ToPSGI;
    require Future::AsyncAwait;
    require IO::Async::Loop;
    my $declined = 0;
    my $app = eval q{
        use Future::AsyncAwait;
        async sub {
            my ($scope, $receive, $send) = @_;
            if ($scope->{type} eq 'lifespan') { $declined++; die "no lifespan here\n" }
            my $ev = await $receive->();
            await IO::Async::Loop->new->delay_future(after => 0.05);
            await $send->({ type => 'http.response.start', status => 202, headers => [ [ 'x-a', 'b' ] ] });
            await $send->({ type => 'http.response.body', body => "one,", more => 1 });
            await $send->({ type => 'http.response.body', body => "two:$ev->{body}", more => 0 });
        }
    } or die $@;
    my $psgi = PAGI::App::ToPSGI::to_psgi($app);
    for my $round (1, 2) {
        open my $input, '<', \"hi" or die;
        my $res = $psgi->({ REQUEST_METHOD => 'POST', SCRIPT_NAME => '', PATH_INFO => '/', QUERY_STRING => '',
                            SERVER_PROTOCOL => 'HTTP/1.0', SERVER_NAME => 'x', SERVER_PORT => 80,
                            CONTENT_LENGTH => 2, 'psgi.input' => $input, 'psgi.errors' => \*STDERR,
                            'psgi.url_scheme' => 'http', 'psgi.streaming' => 0 });
        is ref $res, 'ARRAY', "round $round: an arrayref response";
        is_deeply $res, [ 202, [ 'x-a', 'b' ], [ 'one,', 'two:hi' ] ], "round $round: status, headers and body";
    }
    is $declined, 1, 'the lifespan scope was offered once per process, and a decline is fine';
};

subtest 'lifespan.startup.failed: every request gets a 500' => sub {
    my $app = eval q{
        use Future::AsyncAwait;
        async sub {
            my ($scope, $receive, $send) = @_;
            if ($scope->{type} eq 'lifespan') {
                await $receive->();
                await $send->({ type => 'lifespan.startup.failed', message => 'no database' });
                return;
            }
            die "must not run\n";
        }
    } or die $@;
    my $errors = '';
    open my $err_fh, '>', \$errors or die;
    my $psgi = PAGI::App::ToPSGI->new(app => $app)->to_app;
    my $res = $psgi->({ REQUEST_METHOD => 'GET', PATH_INFO => '/', SERVER_PROTOCOL => 'HTTP/1.1',
                        'psgi.input' => undef, 'psgi.errors' => $err_fh, 'psgi.url_scheme' => 'http' });
    is $res->[0], 500, 'a 500';
    like $errors, qr/Lifespan startup failed: no database/, 'the reason is in psgi.errors';
    ok !eval { PAGI::App::ToPSGI->new(app => $app, colour => 1); 1 }, 'unknown option refused';
    like $@, qr/unknown option\(s\): colour/, 'and named';
};

done_testing;
