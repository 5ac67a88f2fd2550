# PAGI::Middleware::Gzip: negotiation, compressible types only, skips
# (small, Content-Encoding set, HEAD, 206, no-transform), streaming with a
# flush per chunk, file bodies, Vary, Content-Length removed; and curl
# --compressed over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use POSIX ();
use Compress::Raw::Zlib qw(WANT_GZIP MAX_WBITS Z_OK Z_STREAM_END);
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server loop);
use PAGI::Middleware::Gzip;

my $text = join '', map { "line $_ of a compressible text\n" } 1 .. 200;
my $tmp = File::Temp->new;
print {$tmp} $text;
close $tmp;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    die "only http\n" unless $scope->{type} eq 'http';
    my ($path, $q) = ($scope->{path}, $scope->{query_string});
    my %type = (png => 'image/png', json => 'application/json; charset=utf-8', feed => 'application/atom+xml');
    my @h = ([ 'content-type', $type{$q} // 'text/plain' ], [ 'etag', '"v1"' ]);
    if ($path eq '/stream') {
        await $send->({ type => 'http.response.start', status => 200, headers => \@h });
        for my $n (1 .. 3) { await $send->({ type => 'http.response.body', body => "chunk $n\n", more => 1 }) }
        await $send->({ type => 'http.response.body', body => '', more => 0 });
        return;
    }
    if ($path eq '/file') {
        await $send->({ type => 'http.response.start', status => 200, headers => [ @h, [ 'content-length', length $text ] ] });
        await $send->({ type => 'http.response.body', file => $tmp->filename, offset => 5, length => 1000 });
        return;
    }
    my $body = $path eq '/small' ? 'tiny' : $text;
    push @h, [ 'content-encoding', 'br' ] if $path eq '/encoded';
    push @h, [ 'cache-control', 'no-transform' ] if $path eq '/no-transform';
    push @h, [ 'content-length', length $body ];
    await $send->({ type => 'http.response.start', status => $path eq '/partial' ? 206 : 200, headers => \@h });
    await $send->({ type => 'http.response.body', body => $body, more => 0 });
};
my $app = PAGI::Middleware::Gzip->new->wrap($inner);

sub inflate {
    my ($bytes, $coding) = @_;
    my ($i) = Compress::Raw::Zlib::Inflate->new(-WindowBits => $coding eq 'gzip' ? WANT_GZIP : MAX_WBITS);
    my $out = '';
    my $status = $i->inflate($bytes, $out);
    return ($status == Z_OK || $status == Z_STREAM_END) ? $out : "inflate error $status";
}
sub get { my ($path, %h) = @_; my ($p, $q) = split /\?/, $path; response_of(call_app($app, http_scope(path => $p, query_string => $q // '', headers => [ %h ]))) }

subtest 'negotiation' => sub {
    my $r = get('/', 'accept-encoding' => 'gzip, deflate');
    is($r->{header}{'content-encoding'}, 'gzip', 'gzip preferred');
    is(inflate($r->{body}, 'gzip'), $text, 'decompresses to the body');
    ok(!exists $r->{header}{'content-length'}, 'Content-Length removed');
    is($r->{header}{vary}, 'Accept-Encoding', 'Vary: Accept-Encoding');
    is($r->{header}{etag}, 'W/"v1"', 'the ETag becomes weak');
    cmp_ok(length $r->{body}, '<', length($text) / 3, 'smaller');
    $r = get('/', 'accept-encoding' => 'gzip;q=0.2, deflate;q=0.8');
    is($r->{header}{'content-encoding'}, 'deflate', 'q-values: deflate');
    is(inflate($r->{body}, 'deflate'), $text, 'deflate (zlib format) decompresses');
    is(get('/', 'accept-encoding' => '*')->{header}{'content-encoding'}, 'gzip', '*: gzip');
    $r = get('/', 'accept-encoding' => 'gzip;q=0, br');
    ok(!exists $r->{header}{'content-encoding'}, 'q=0 refuses');
    is($r->{header}{vary}, 'Accept-Encoding', 'still Vary');
    is($r->{body}, $text, 'uncompressed');
    ok(!exists get('/')->{header}{'content-encoding'}, 'no Accept-Encoding: identity');
};

subtest 'what is not compressed' => sub {
    my %ae = ('accept-encoding' => 'gzip');
    my $r = get('/?png', %ae);
    ok(!exists $r->{header}{'content-encoding'}, 'image/png: not compressible');
    ok(!exists $r->{header}{vary}, 'and no Vary');
    is(get('/?json', %ae)->{header}{'content-encoding'}, 'gzip', 'application/json with parameters: compressed');
    is(get('/?feed', %ae)->{header}{'content-encoding'}, 'gzip', '+xml: compressed');
    ok(!exists get('/small', %ae)->{header}{'content-encoding'}, 'below min_size: not compressed');
    is(get('/encoded', %ae)->{header}{'content-encoding'}, 'br', 'Content-Encoding already set: left alone');
    ok(!exists get('/partial', %ae)->{header}{'content-encoding'}, '206: not compressed');
    ok(!exists get('/no-transform', %ae)->{header}{'content-encoding'}, 'no-transform: not compressed');
    $r = response_of(call_app($app, http_scope(method => 'HEAD', headers => [ 'accept-encoding' => 'gzip' ])));
    ok(!exists $r->{header}{'content-encoding'}, 'HEAD: not compressed');
};

subtest 'streaming: every chunk is flushed' => sub {
    my $result = call_app($app, http_scope(path => '/stream', headers => [ 'accept-encoding' => 'gzip' ]));
    my @bodies = grep { $_->{type} eq 'http.response.body' } @{ $result->{events} };
    is(scalar @bodies, 4, 'one output event per input event');
    my ($i) = Compress::Raw::Zlib::Inflate->new(-WindowBits => WANT_GZIP);
    for my $n (1 .. 3) {
        my $out = '';
        my $chunk = $bodies[ $n - 1 ]{body};
        $i->inflate($chunk, $out);
        is($out, "chunk $n\n", "chunk $n decompresses on its own arrival");
        is($bodies[ $n - 1 ]{more}, 1, 'more => 1');
    }
    is($bodies[3]{more}, 0, 'the last ends the body');
};

subtest 'file bodies' => sub {
    my $r = get('/file', 'accept-encoding' => 'gzip');
    is($r->{header}{'content-encoding'}, 'gzip', 'compressed');
    is(inflate($r->{body}, 'gzip'), substr($text, 5, 1000), 'offset and length honoured');
};

subtest 'curl --compressed over a real socket' => sub {
    my ($server, $port) = start_server(app => $app);
    my $dir = File::Temp->newdir;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        exec 'curl', '-s', '--max-time', '20', '--compressed', '-D', "$dir/head", '-o', "$dir/body", "http://127.0.0.1:$port/stream";
        exit 127;
    }
    my $exited;
    my $deadline = time + 30;
    until ($exited || time > $deadline) {
        loop()->delay_future(after => 0.05)->get;
        $exited = waitpid($pid, POSIX::WNOHANG()) == $pid;
    }
    ok($exited && $? == 0, 'curl finished') or kill 'KILL', $pid;
    open my $fh, '<', "$dir/body"; my $body = do { local $/; <$fh> // '' };
    open my $hh, '<', "$dir/head"; my $head = do { local $/; <$hh> // '' };
    like($head, qr/^content-encoding: gzip\r$/mi, 'gzip on the wire');
    like($head, qr/^transfer-encoding: chunked\r$/mi, 'chunked');
    is($body, "chunk 1\nchunk 2\nchunk 3\n", 'curl decompresses it');
    stop_server($server);
};

eval { PAGI::Middleware::Gzip->new(level => 12) };
like($@, qr/option 'level'/, 'a bad level names the option');

done_testing;
