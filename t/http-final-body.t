# A final body (more => 0) never waits for drain (DESIGN 4): the response
# is over and its bytes are bounded by what the app already held, so its
# $send Future is done at once even far above write_high_watermark. A
# streamed chunk waits only when the bytes buffered before it reached the
# watermark: the first big chunk goes at once, the one after it waits.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses);
use Future::AsyncAwait;

my %seen;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    return if $scope->{type} ne 'http';
    await $send->({ type => 'http.response.start', status => 200, headers => [] });
    if ($scope->{path} eq '/final') {
        my $f = $send->({ type => 'http.response.body', body => 'f' x 1_000_000 });
        $seen{final_ready} = $f->is_ready ? 1 : 0;
        await $f;
        return;
    }
    my $f = $send->({ type => 'http.response.body', body => 's' x 500_000, more => 1 });
    $seen{first_chunk_ready} = $f->is_ready ? 1 : 0;
    await $f;
    # Not flushed yet (same wake), so the first chunk is still all buffered.
    $f = $send->({ type => 'http.response.body', body => 's' x 500_000, more => 1 });
    $seen{chunk_ready} = $f->is_ready ? 1 : 0;
    await $f;
    await $send->({ type => 'http.response.body', body => '' });
};
my ($server, $port) = start_server(app => $app, write_high_watermark => 4096, write_low_watermark => 1024);

my ($final) = parse_responses(raw_exchange($port, "GET /final HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")->get);
is(length($final->{body} // ''), 1_000_000, 'the final body arrives whole');
is($seen{final_ready}, 1, "the final body's \$send Future was done at once");

my ($streamed) = parse_responses(raw_exchange($port, "GET /chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")->get);
is(length($streamed->{body} // ''), 1_000_000, 'the streamed body arrives whole');
is($seen{first_chunk_ready}, 1, 'a streamed chunk with nothing buffered before it goes at once, however big');
is($seen{chunk_ready}, 0, 'the next chunk, with the first still buffered above the watermark, waits for drain');

stop_server($server);
done_testing;
